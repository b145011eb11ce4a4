//! ONC RPC v2 (RFC 5531) over TCP with record marking, AUTH_SYS credentials, and a
//! deadline on every call: a dead server costs at most the configured timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::decode::{self, Call};
pub use super::failure::RpcError;
use super::xdr::Enc;

/// The send and receive buffer sizes of a connection: room for a window of pipelined
/// calls ([`Transport::call_many`]) and for 1 MiB READs and WRITEs.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Reserved ports tried when the process may bind them (servers exporting with `secure`).
const RESERVED: std::ops::RangeInclusive<u16> = 600..=1023;

/// The AUTH_SYS identity berth presents (RFC 5531 appendix A). The server trusts it as
/// given; berth presents root so it can create directories and set owners.
#[derive(Debug, Clone)]
pub struct AuthSys {
    pub machine: String,
    pub uid: u32,
    pub gid: u32,
}

impl AuthSys {
    fn body(&self) -> Vec<u8> {
        let mut e = Enc::new();
        let machine: String = self.machine.chars().take(255).collect();
        e.u32(0).opaque(machine.as_bytes()).u32(self.uid).u32(self.gid).u32(0);
        e.into_bytes()
    }
}

/// One TCP connection to one RPC program.
#[derive(Debug)]
pub struct Transport {
    stream: TcpStream,
    xid: u32,
    cred: Vec<u8>,
    pub peer: SocketAddr,
}

fn bind_reserved(socket: &socket2::Socket, addr: &SocketAddr) -> io::Result<bool> {
    let span = u32::from(RESERVED.end() - RESERVED.start()) + 1;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for i in 0..span {
        let offset = u16::try_from((start + i) % span).unwrap_or(0);
        let port = RESERVED.start() + offset;
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
        };
        match socket.bind(&local.into()) {
            Ok(()) => return Ok(true),
            // Taken: try the next reserved port.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            // Not permitted (no CAP_NET_BIND_SERVICE): use an ordinary port.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

impl Transport {
    /// Connects to `addr`, from a reserved port when this process may bind one, and sets
    /// `timeout` on the connect and on every read and write.
    pub fn connect(addr: SocketAddr, timeout: Duration, auth: &AuthSys) -> io::Result<Transport> {
        use socket2::{Domain, Protocol, Socket, Type};
        let mut last = None;
        // A reserved port can be refused at connect (EADDRNOTAVAIL: the same 4-tuple is in
        // TIME_WAIT); a few fresh sockets get past that.
        for _ in 0..4 {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            bind_reserved(&socket, &addr)?;
            match socket.connect_timeout(&addr.into(), timeout) {
                Ok(()) => {
                    let stream: TcpStream = socket.into();
                    stream.set_nodelay(true)?;
                    socket2::SockRef::from(&stream).set_send_buffer_size(SOCKET_BUFFER)?;
                    socket2::SockRef::from(&stream).set_recv_buffer_size(SOCKET_BUFFER)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    let xid = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.subsec_nanos() ^ std::process::id());
                    return Ok(Transport { stream, xid, cred: auth.body(), peer: addr });
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)))
    }

    /// The local end of the connection.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }

    fn message(&mut self, prog: u32, vers: u32, proc: u32, args: &[u8]) -> Result<(u32, Vec<u8>), RpcError> {
        self.xid = self.xid.wrapping_add(1);
        let xid = self.xid;
        let mut msg = Enc::new();
        msg.u32(0); // record mark, filled in below
        msg.u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc);
        msg.u32(1).opaque(&self.cred); // AUTH_SYS
        msg.u32(0).opaque(&[]); // AUTH_NONE verifier
        let mut bytes = msg.into_bytes();
        bytes.extend_from_slice(args);
        let len = u32::try_from(bytes.len() - 4).map_err(|_| RpcError::TooLarge(bytes.len()))?;
        bytes[..4].copy_from_slice(&(0x8000_0000 | len).to_be_bytes());
        Ok((xid, bytes))
    }

    /// Calls `proc` of `prog` version `vers` with XDR-encoded `args`; returns the encoded
    /// results. Any error leaves the connection unusable: callers drop it.
    pub fn call(&mut self, prog: u32, vers: u32, proc: u32, args: &[u8]) -> Result<Vec<u8>, RpcError> {
        let (xid, bytes) = self.message(prog, vers, proc, args)?;
        self.stream.write_all(&bytes)?;
        let reply = self.read_record()?;
        decode::rpc_reply(&reply, &Call { xid, prog, vers, proc }).map(<[u8]>::to_vec)
    }

    /// Calls every `(proc, args)` of `calls` with up to `window` of them in flight, and
    /// returns their encoded results in call order: one round trip's wait for a window of
    /// calls instead of one per call. The server may answer in any order (each reply is
    /// matched to its call by XID). Each call is sent when a reply makes room, from this
    /// thread; the socket's buffers ([`SOCKET_BUFFER`]) hold a window of the smaller side
    /// of every NFS call (a WRITE's reply, a READ's request), so neither end can stall the
    /// other. Any error fails the whole batch and leaves the connection unusable, as in
    /// [`Transport::call`].
    pub fn call_many(
        &mut self,
        prog: u32,
        vers: u32,
        calls: &[(u32, &[u8])],
        window: usize,
    ) -> Result<Vec<Vec<u8>>, RpcError> {
        let mut out = vec![Vec::new(); calls.len()];
        let mut waiting = std::collections::HashMap::with_capacity(window);
        let mut next = 0;
        for _ in 0..calls.len() {
            while next < calls.len() && waiting.len() < window.max(1) {
                let (proc, args) = calls[next];
                let (xid, bytes) = self.message(prog, vers, proc, args)?;
                self.stream.write_all(&bytes)?;
                waiting.insert(xid, (next, proc));
                next += 1;
            }
            let reply = self.read_record()?;
            let got = reply.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            let Some((i, proc)) = waiting.remove(&got) else {
                let want = waiting.keys().min().copied().unwrap_or_default();
                return Err(RpcError::Xid { want, got });
            };
            out[i] = decode::rpc_reply(&reply, &Call { xid: got, prog, vers, proc })?.to_vec();
        }
        Ok(out)
    }

    /// Reads one record. The buffer grows with the bytes that arrive, not with the length
    /// a fragment's mark claims.
    fn read_record(&mut self) -> Result<Vec<u8>, RpcError> {
        let mut out = Vec::new();
        loop {
            let mut mark = [0u8; 4];
            self.stream.read_exact(&mut mark)?;
            let frag = decode::fragment(mark, out.len())?;
            let want = u64::try_from(frag.len).unwrap_or(u64::MAX);
            let got = Read::by_ref(&mut self.stream).take(want).read_to_end(&mut out)?;
            if got < frag.len {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            if frag.last {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server that answers one call with `reply` split into two fragments.
    fn serve(reply: impl FnOnce(u32) -> Vec<u8> + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut mark = [0u8; 4];
            s.read_exact(&mut mark).expect("mark");
            let len = (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize;
            let mut call = vec![0u8; len];
            s.read_exact(&mut call).expect("call");
            let xid = u32::from_be_bytes([call[0], call[1], call[2], call[3]]);
            let body = reply(xid);
            let (a, b) = body.split_at(body.len() / 2);
            s.write_all(&(a.len() as u32).to_be_bytes()).expect("write");
            s.write_all(a).expect("write");
            s.write_all(&(0x8000_0000 | b.len() as u32).to_be_bytes()).expect("write");
            s.write_all(b).expect("write");
        });
        addr
    }

    fn auth() -> AuthSys {
        AuthSys { machine: "test".into(), uid: 0, gid: 0 }
    }

    #[test]
    fn multi_fragment_replies_are_joined() {
        let addr = serve(|xid| {
            let mut e = Enc::new();
            e.u32(xid).u32(1).u32(0).u32(0).opaque(&[]).u32(0).u32(42).u32(43);
            e.into_bytes()
        });
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        let body = t.call(100003, 3, 0, &[]).expect("call");
        assert_eq!(body, [0, 0, 0, 42, 0, 0, 0, 43]);
    }

    #[test]
    fn denied_and_mismatched_replies_are_errors() {
        let addr = serve(|xid| {
            let mut e = Enc::new();
            e.u32(xid).u32(1).u32(1).u32(1).u32(2);
            e.into_bytes()
        });
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        let err = t.call(100003, 3, 0, &[]).expect_err("denied");
        assert!(err.to_string().contains("reserved source port"), "{err}");

        let addr = serve(|xid| {
            let mut e = Enc::new();
            e.u32(xid.wrapping_add(9)).u32(1).u32(0);
            e.into_bytes()
        });
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        assert!(matches!(t.call(1, 1, 1, &[]), Err(RpcError::Xid { .. })));
    }

    /// A mark that promises 8 MiB, then 4 bytes and a hang-up: the call ends early.
    #[test]
    fn a_fragment_shorter_than_its_mark_ends_the_call() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut mark = [0u8; 4];
            s.read_exact(&mut mark).expect("mark");
            let mut call = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
            s.read_exact(&mut call).expect("call");
            s.write_all(&(0x8000_0000u32 | 8 << 20).to_be_bytes()).expect("write");
            s.write_all(&call[..4]).expect("write");
        });
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        match t.call(1, 1, 1, &[]) {
            Err(RpcError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut t = Transport::connect(addr, Duration::from_millis(200), &auth()).expect("connect");
        let start = std::time::Instant::now();
        assert!(matches!(t.call(1, 1, 1, &[]), Err(RpcError::Io(_))));
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    /// A server that reads `calls` calls, then answers them in `order` (indexes into the
    /// calls; an index past them answers an XID nobody asked), each reply carrying its
    /// call's index, and hangs up after `replies` of them.
    fn serve_batch(calls: usize, order: Vec<usize>, replies: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut xids = Vec::new();
            for _ in 0..calls {
                let mut mark = [0u8; 4];
                if s.read_exact(&mut mark).is_err() {
                    return;
                }
                let mut call = vec![0u8; (u32::from_be_bytes(mark) & 0x7fff_ffff) as usize];
                s.read_exact(&mut call).expect("call");
                xids.push(u32::from_be_bytes([call[0], call[1], call[2], call[3]]));
            }
            for &i in order.iter().take(replies) {
                let xid = xids.get(i).copied().unwrap_or(7);
                let mut e = Enc::new();
                e.u32(xid).u32(1).u32(0).u32(0).opaque(&[]).u32(0).u32(i as u32);
                let body = e.into_bytes();
                s.write_all(&(0x8000_0000 | body.len() as u32).to_be_bytes()).expect("write");
                s.write_all(&body).expect("write");
            }
        });
        addr
    }

    /// Replies in another order than the calls are matched to their calls by XID.
    #[test]
    fn pipelined_replies_in_any_order_reach_their_calls() {
        let addr = serve_batch(6, vec![5, 0, 3, 1, 4, 2], 6);
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        let args = [&[][..]; 6];
        let calls: Vec<(u32, &[u8])> = args.iter().map(|a| (1, *a)).collect();
        // A window of 6: the server reads every call before it answers one.
        let out = t.call_many(100003, 3, &calls, 6).expect("batch");
        for (i, body) in out.iter().enumerate() {
            assert_eq!(body, &(i as u32).to_be_bytes(), "reply {i}");
        }
    }

    /// A reply to no call in flight, or a server that hangs up mid-batch, fails the batch.
    #[test]
    fn a_stray_reply_or_a_hang_up_mid_batch_fails_the_batch() {
        let addr = serve_batch(3, vec![0, 9, 1], 3);
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        let calls = [(1, &[][..]); 3];
        assert!(matches!(t.call_many(100003, 3, &calls, 3), Err(RpcError::Xid { got: 7, .. })));

        let addr = serve_batch(4, vec![0, 1, 2, 3], 2);
        let mut t = Transport::connect(addr, Duration::from_secs(5), &auth()).expect("connect");
        let calls = [(1, &[][..]); 4];
        match t.call_many(100003, 3, &calls, 4) {
            Err(RpcError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("{other:?}"),
        }
    }
}
