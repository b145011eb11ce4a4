//! Damage done to a store's packs on disk, as a failing disk or a careless hand would do
//! it: a flipped bit in place, or a pack rewritten with one chunk changed or left out.

use std::fs;
use std::path::{Path, PathBuf};

use berth::archive::store::DirStore;
use berth::archive::{Hash, pack};

/// The file holding chunk `hash` in the store at `root`, the chunk's offset and length.
pub fn location(root: &Path, hash: &Hash) -> (PathBuf, u64, usize) {
    let store = DirStore::open(root).expect("open the store");
    let (path, offset, len) = store.chunk_location(hash).expect("list the store").expect("the chunk is stored");
    (path, offset, len as usize)
}

/// Flips the bits of `mask` in byte `at` of chunk `hash`, in place.
pub fn flip(root: &Path, hash: &Hash, at: usize, mask: u8) {
    use std::os::unix::fs::FileExt;
    let (path, offset, len) = location(root, hash);
    assert!(at < len, "byte {at} of a {len}-byte chunk");
    let file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset + at as u64).unwrap();
    file.write_all_at(&[byte[0] ^ mask], offset + at as u64).unwrap();
}

/// Rewrites the pack holding chunk `hash` with that chunk's bytes replaced by what
/// `change` makes of them, or without the chunk when it gives `None`: a new pack under
/// its own name, the old one removed. Returns the chunk's bytes as they were.
pub fn rewrite(root: &Path, hash: &Hash, change: impl FnOnce(&[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    let (path, _, _) = location(root, hash);
    let bytes = fs::read(&path).unwrap();
    let name: Hash = path.file_name().unwrap().to_str().unwrap().parse().expect("a packed chunk");
    let Ok(pack::Parsed::Index(index)) = pack::parse(&name, &bytes) else { panic!("pack {name} does not parse") };
    let mut builder = pack::Builder::default();
    let mut old = None;
    let mut change = Some(change);
    for e in &index.entries {
        let data = &bytes[e.offset as usize..e.offset as usize + e.len as usize];
        if e.hash != *hash {
            builder.push(e.hash, data);
            continue;
        }
        old = Some(data.to_vec());
        if let Some(new) = change.take().and_then(|f| f(data)) {
            builder.push(e.hash, &new);
        }
    }
    let new = (!builder.is_empty()).then(|| builder.seal());
    if let Some(sealed) = &new {
        fs::write(path.with_file_name(sealed.index.name.to_string()), &sealed.bytes).unwrap();
    }
    if new.is_none_or(|sealed| sealed.index.name != name) {
        fs::remove_file(&path).unwrap();
    }
    old.expect("the chunk is in its pack")
}

/// Every pack file of the store at `root`.
pub fn files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(root.join("packs")).unwrap().map(|e| e.unwrap().path()).collect();
    out.sort();
    out
}

/// Turns the store at `root` into the layout before packs: every packed chunk in its own
/// file `chunks/ab/<hash>`, no pack left.
pub fn unpack(root: &Path) {
    for path in files(root) {
        let bytes = fs::read(&path).unwrap();
        let name: Hash = path.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let Ok(pack::Parsed::Index(index)) = pack::parse(&name, &bytes) else { panic!("pack {name} does not parse") };
        for e in &index.entries {
            let hash = e.hash.to_string();
            let dir = root.join("chunks").join(&hash[..2]);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(&hash), &bytes[e.offset as usize..e.offset as usize + e.len as usize]).unwrap();
        }
        fs::remove_file(&path).unwrap();
    }
}
