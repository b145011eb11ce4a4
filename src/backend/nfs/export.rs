//! berth's own files on the export, the durable truth about NFS volumes:
//!
//! ```text
//! <export>/.berth/volumes/<key>.json     volume records (written atomically)
//! <export>/.berth/snapshots/<key>.json   snapshot records
//! <export>/.berth/claims/<sha256>        which volume owns a subdirectory
//! <export>/.berth/claims/<sha256>.beneath/<sha256>  claims beneath that subdirectory
//! <export>/.berth/nodes/<node-id>        node plugins that can mount this export
//! <export>/.berth/tmp/<key>              copies being assembled; renamed into place whole
//! <export>/.berth/trash/<key>            volumes being removed
//! <export>/.berth-snapshots/<key>/       snapshot contents
//! ```

use sha2::{Digest, Sha256};

use crate::nfs::{Client, Error, Fh, FileType, SetAttr, Status};

use super::copy::Result;

pub const META: &str = ".berth";
pub const SNAPSHOTS: &str = ".berth-snapshots";
pub const VOLUMES: &str = "volumes";
pub const SNAPSHOT_RECORDS: &str = "snapshots";
pub const CLAIMS: &str = "claims";
pub const NODES: &str = "nodes";
pub const TMP: &str = "tmp";
pub const TRASH: &str = "trash";

fn not_dir(name: &[u8]) -> Error {
    tracing::warn!(name = %String::from_utf8_lossy(name), "expected a directory on the export");
    Error::Status { proc: "LOOKUP", status: Status::NOTDIR }
}

/// Looks up a relative path one component at a time; every component but the last must
/// be a directory (a symlink is not one: LOOKUP does not follow it). `None` when absent.
pub fn walk(client: &mut Client, from: &Fh, rel: &str) -> Result<Option<(Fh, crate::nfs::Attr)>> {
    let mut cur = from.clone();
    let mut attr = client.getattr(from)?;
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if attr.ftype != FileType::Directory {
            return Err(not_dir(part.as_bytes()));
        }
        match client.lookup(&cur, part.as_bytes())? {
            Some((fh, a)) => {
                cur = fh;
                attr = a;
            }
            None => return Ok(None),
        }
    }
    Ok(Some((cur, attr)))
}

/// Creates each missing directory of `rel` with `mode`; returns the last one's handle.
pub fn mkdir_all(client: &mut Client, from: &Fh, rel: &str, mode: u32) -> Result<Fh> {
    let mut cur = from.clone();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        cur = match client.lookup(&cur, part.as_bytes())? {
            Some((fh, a)) if a.ftype == FileType::Directory => fh,
            Some(_) => return Err(not_dir(part.as_bytes())),
            None => match client.mkdir(&cur, part.as_bytes(), mode) {
                Ok((fh, _)) => fh,
                // Made by a concurrent call in the meantime.
                Err(e) if e.is_exist() => match client.lookup(&cur, part.as_bytes())? {
                    Some((fh, a)) if a.ftype == FileType::Directory => fh,
                    _ => return Err(not_dir(part.as_bytes())),
                },
                Err(e) => return Err(e),
            },
        };
    }
    Ok(cur)
}

/// The handle of `.berth/<sub>`, created when missing.
pub fn meta_dir(client: &mut Client, sub: &str) -> Result<Fh> {
    let root = client.root.clone();
    mkdir_all(client, &root, &format!("{META}/{sub}"), 0o700)
}

fn write_all(client: &mut Client, fh: &Fh, bytes: &[u8]) -> Result<()> {
    let mut offset = 0usize;
    while offset < bytes.len() {
        let end = (offset + client.io_size as usize).min(bytes.len());
        let n = client.write(fh, offset as u64, &bytes[offset..end], true)?;
        if n == 0 {
            return Err(Error::Status { proc: "WRITE", status: Status(5) });
        }
        offset += n as usize;
    }
    Ok(())
}

/// Writes `dir/name` atomically: a temporary file written durably, then renamed over it.
pub fn write_file(client: &mut Client, dir: &Fh, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!(".{name}.tmp");
    let (fh, _) = client.create(dir, tmp.as_bytes(), 0o600, false)?;
    client.setattr(&fh, &SetAttr { size: Some(0), ..SetAttr::default() })?;
    write_all(client, &fh, bytes)?;
    client.rename(dir, tmp.as_bytes(), dir, name.as_bytes())
}

/// Reads a whole small file; `None` when absent.
pub fn read_file(client: &mut Client, dir: &Fh, name: &str) -> Result<Option<Vec<u8>>> {
    let Some((fh, attr)) = client.lookup(dir, name.as_bytes())? else {
        return Ok(None);
    };
    if attr.ftype != FileType::Regular {
        return Ok(None);
    }
    let mut out = Vec::new();
    loop {
        let (data, eof) = client.read(&fh, out.len() as u64, client.io_size)?;
        out.extend_from_slice(&data);
        if eof || data.is_empty() || out.len() > 1 << 20 {
            return Ok(Some(out));
        }
    }
}

/// Removes a file; absent is success.
pub fn remove_file(client: &mut Client, dir: &Fh, name: &str) -> Result<()> {
    match client.remove(dir, name.as_bytes()) {
        Err(e) if !e.is_noent() => Err(e),
        _ => Ok(()),
    }
}

/// The claim file's name for a subdirectory.
#[must_use]
pub fn claim_name(sub_dir: &str) -> String {
    hex::encode(Sha256::digest(sub_dir.as_bytes()))
}

/// Who holds the claim on `sub_dir`, if anyone.
pub fn claim_holder(client: &mut Client, sub_dir: &str) -> Result<Option<String>> {
    let dir = meta_dir(client, CLAIMS)?;
    Ok(read_file(client, &dir, &claim_name(sub_dir))?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The proper ancestors of `sub_dir`: `a/b/c` has `a` and `a/b`.
fn ancestors(sub_dir: &str) -> Vec<String> {
    let parts: Vec<&str> = sub_dir.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

/// The directory in `.berth/claims` whose entries mark the claims beneath `sub_dir`.
fn beneath_name(sub_dir: &str) -> String {
    format!("{}.beneath", claim_name(sub_dir))
}

/// Claims `sub_dir` for `volume_id`. Returns `Ok(true)` when this call made the claim,
/// `Ok(false)` when the volume already held it, and the holder when another volume holds
/// it, a directory above it or one beneath it: one volume's directory never lies inside
/// another's.
///
/// The claim is written whole to a temporary name and then hard-linked into place: LINK
/// fails when the name exists, so two volumes can never both win. A claim then marks
/// itself beneath each of its ancestors, and only then looks for their claims and for
/// marks beneath itself. Of two claims racing for nested directories, at least one sees
/// the other (and gives up).
pub fn claim(client: &mut Client, sub_dir: &str, volume_id: &str) -> Result<std::result::Result<bool, String>> {
    let dir = meta_dir(client, CLAIMS)?;
    let name = claim_name(sub_dir);
    let key = volume_id.rsplit(':').next().unwrap_or(volume_id);
    let tmp = format!(".{name}.{key}");
    let (fh, _) = client.create(&dir, tmp.as_bytes(), 0o600, false)?;
    client.setattr(&fh, &SetAttr { size: Some(0), ..SetAttr::default() })?;
    write_all(client, &fh, volume_id.as_bytes())?;
    let linked = client.link(&fh, &dir, name.as_bytes());
    remove_file(client, &dir, &tmp)?;
    let fresh = match linked {
        Ok(()) => true,
        Err(e) if e.is_exist() => {
            let holder = read_file(client, &dir, &name)?.map(|b| String::from_utf8_lossy(&b).into_owned());
            match holder {
                Some(h) if h == volume_id => false,
                other => return Ok(Err(other.unwrap_or_else(|| "an unknown volume".into()))),
            }
        }
        Err(e) => return Err(e),
    };
    for ancestor in ancestors(sub_dir) {
        let beneath = mkdir_all(client, &dir, &beneath_name(&ancestor), 0o700)?;
        write_file(client, &beneath, &name, volume_id.as_bytes())?;
    }
    if let Some(holder) = nested_holder(client, &dir, sub_dir, volume_id)? {
        if fresh {
            release(client, sub_dir, volume_id)?;
        }
        return Ok(Err(holder));
    }
    Ok(Ok(fresh))
}

/// Another volume's claim on an ancestor of `sub_dir` or beneath it, described.
fn nested_holder(client: &mut Client, dir: &Fh, sub_dir: &str, volume_id: &str) -> Result<Option<String>> {
    for ancestor in ancestors(sub_dir) {
        if let Some(holder) = read_file(client, dir, &claim_name(&ancestor))? {
            let holder = String::from_utf8_lossy(&holder).into_owned();
            if holder != volume_id {
                return Ok(Some(format!("{holder}, whose directory {ancestor} contains {sub_dir}")));
            }
        }
    }
    if let Some((beneath, _)) = client.lookup(dir, beneath_name(sub_dir).as_bytes())? {
        for entry in client.readdirplus(&beneath)? {
            let name = String::from_utf8_lossy(&entry.name).into_owned();
            if name.starts_with('.') {
                continue;
            }
            if let Some(holder) = read_file(client, &beneath, &name)? {
                let holder = String::from_utf8_lossy(&holder).into_owned();
                if holder != volume_id {
                    return Ok(Some(format!("{holder}, whose directory lies inside {sub_dir}")));
                }
            }
        }
    }
    Ok(None)
}

/// Removes the marks of `volume_id`'s claim on `sub_dir` beneath its ancestors.
fn unmark(client: &mut Client, sub_dir: &str, volume_id: &str) -> Result<()> {
    let dir = meta_dir(client, CLAIMS)?;
    let name = claim_name(sub_dir);
    for ancestor in ancestors(sub_dir) {
        if let Some((beneath, _)) = client.lookup(&dir, beneath_name(&ancestor).as_bytes())?
            && read_file(client, &beneath, &name)?.is_some_and(|h| h == volume_id.as_bytes())
        {
            remove_file(client, &beneath, &name)?;
        }
    }
    Ok(())
}

/// Releases `sub_dir` if `volume_id` holds it.
pub fn release(client: &mut Client, sub_dir: &str, volume_id: &str) -> Result<()> {
    if claim_holder(client, sub_dir)?.as_deref() == Some(volume_id) {
        let dir = meta_dir(client, CLAIMS)?;
        remove_file(client, &dir, &claim_name(sub_dir))?;
    }
    unmark(client, sub_dir, volume_id)
}

/// Every record file (`*.json`) in `.berth/<sub>`, parsed; unreadable ones are logged
/// and skipped.
pub fn records<T: serde::de::DeserializeOwned>(client: &mut Client, sub: &str) -> Result<Vec<T>> {
    let dir = meta_dir(client, sub)?;
    let mut out = Vec::new();
    for entry in client.readdirplus(&dir)? {
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if let Some(bytes) = read_file(client, &dir, &name)? {
            match serde_json::from_slice(&bytes) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(file = %format!("{META}/{sub}/{name}"), error = %e, "record on the export cannot be read; left in place");
                }
            }
        }
    }
    Ok(out)
}
