//! The few Linux calls ringcast and its load generator make themselves, each wrapped once with
//! its safety argument: the per-shard epoll set, eventfd, timerfd, non-blocking recv/writev,
//! shutdown, socket options, limits, signals and CPU accounting. This crate is the only place
//! in the workspace with `unsafe`; every other crate forbids it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// An edge-triggered epoll set.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

pub const EV_IN: u32 = libc::EPOLLIN as u32;
pub const EV_OUT: u32 = libc::EPOLLOUT as u32;
pub const EV_ERR: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// The peer shut its write side (FIN): whatever it sent before is still to be read.
pub const EV_RDHUP: u32 = libc::EPOLLRDHUP as u32;
const EV_ET: u32 = libc::EPOLLET as u32;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by epoll_create1 and is owned by nobody else.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Adds `fd` for edge-triggered read and write readiness, tagged with `token`.
    pub fn add(&self, fd: RawFd, token: u64, interest: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: interest | EV_ET, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; epoll_ctl does not
        // keep the pointer.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Collects ready events without blocking; returns how many were written into `events`.
    pub fn poll(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        self.wait(events, 0)
    }

    /// Waits up to `timeout_ms` for ready events; returns how many were written into `events`.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `events` is valid for writes of `max` entries; the timeout bounds the wait.
        let n = cvt(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms)
        })?;
        Ok(n as usize)
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A second fd for the same epoll set (for the runtime to poll).
    pub fn try_clone(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// An eventfd: other threads write to it to wake the shard.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(EventFd { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes the reader. Never blocks: a full counter (2^64-2 pending wakes) is still a wake.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let _ = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// A periodic timerfd: the shard's tick.
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    pub fn periodic(every: Duration) -> io::Result<TimerFd> {
        let flags = libc::TFD_CLOEXEC | libc::TFD_NONBLOCK;
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = cvt(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ts = libc::timespec {
            tv_sec: every.as_secs() as libc::time_t,
            tv_nsec: every.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec { it_interval: ts, it_value: ts };
        // SAFETY: `spec` is valid for reads during the call; the old value pointer may be null.
        cvt(unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })?;
        Ok(TimerFd { fd })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64.
        let _ = unsafe { libc::read(self.raw(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// Takes an accepted stream's descriptor out of the runtime, as an owned fd: dropping it
/// closes the socket (and so leaves the epoll set), so a double close cannot be written.
pub fn own_stream(stream: impl IntoRawFd) -> OwnedFd {
    let fd = stream.into_raw_fd();
    // SAFETY: into_raw_fd() just gave up ownership of `fd`; nothing else holds or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Non-blocking recv into `buf`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
    cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// Whether an idle keep-alive connection can carry another request: nothing to read on it,
/// no end of stream, no error (a backend that closed it while idle makes it unusable, and
/// finding that out before writing means the request surely never reached it).
pub fn idle_reusable(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: `b` is valid for writes of one byte for the duration of the call; MSG_PEEK
    // leaves any byte in the socket.
    let r =
        unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Non-blocking gather write. MSG_NOSIGNAL: a closed peer is an EPIPE error, not a signal.
pub fn writev(fd: BorrowedFd<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let fd = fd.as_raw_fd();
    // SAFETY: IoSlice is ABI-compatible with iovec (std guarantees it on Unix); `bufs` and the
    // memory each slice points to stay borrowed for the duration of the call.
    let msg = libc::msghdr {
        msg_name: std::ptr::null_mut(),
        msg_namelen: 0,
        msg_iov: bufs.as_ptr() as *mut libc::iovec,
        msg_iovlen: bufs.len().min(1024) as _,
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    // SAFETY: `msg` points at live iovecs (see above) and no name or control data.
    cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// Half-closes the write side: the peer reads EOF after what was sent.
pub fn shutdown_write(fd: BorrowedFd<'_>) {
    let fd = fd.as_raw_fd();
    // SAFETY: shutdown takes no pointers; an error (peer gone) needs no handling.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Stops a listening socket: a pending accept on it fails, which ends the accept loop.
pub fn shutdown_listener(fd: RawFd) {
    // SAFETY: shutdown takes no pointers.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// setsockopt with a value of type `T` (a c_int or a struct the option takes).
fn set_option<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Sets TCP_NODELAY: the shard coalesces writes itself, so Nagle only adds latency.
pub fn set_nodelay(fd: BorrowedFd<'_>) {
    let _ = set_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &(1 as libc::c_int));
}

/// Bytes written to a TCP socket that the peer has not yet acknowledged, sent or not
/// (`SIOCOUTQ`), 0 when unknown.
pub fn unacked_bytes(fd: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which is live.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// Makes the socket's close abortive (SO_LINGER on, 0 s): closing it then sends RST and frees
/// its send queue at once, instead of leaving an orphan that holds unread bytes in kernel
/// memory while it probes a peer that does not read.
pub fn reset_on_close(fd: BorrowedFd<'_>) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = set_option(fd, libc::SOL_SOCKET, libc::SO_LINGER, &l);
}

/// Sets SO_SNDBUF (the kernel doubles it, and stops growing it on its own).
pub fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) {
    let n = bytes.min(i32::MAX as usize) as libc::c_int;
    let _ = set_option(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &n);
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: passes a live cpu_set_t and its exact size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set we own; the index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&i| unsafe { libc::CPU_ISSET(i, &set) }).collect()
}

/// The soft and hard open-file limits.
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: passes a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let (soft, hard) = nofile_limit();
    if soft < hard {
        let r = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: passes a live rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            return hard;
        }
    }
    soft
}

/// SIGINT and SIGTERM, blocked in every thread so that one thread can take them with sigwait.
pub struct TermSignals {
    set: libc::sigset_t,
}

impl TermSignals {
    /// SIGHUP's number: reload, do not stop.
    pub const HANGUP: i32 = libc::SIGHUP;

    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it spawns
    /// afterwards.
    pub fn block() -> io::Result<TermSignals> {
        // SAFETY: sigset_t is plain data and sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t for each call.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
        }
        // SAFETY: `set` is initialised; the old mask pointer may be null.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(TermSignals { set })
    }

    /// Waits for the next SIGINT, SIGTERM or SIGHUP and returns its number.
    pub fn wait(&self) -> i32 {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is initialised and `sig` is a live c_int.
        unsafe { libc::sigwait(&self.set, &mut sig) };
        sig
    }
}

/// Turns transparent huge pages off for this process. The allocator asks for huge pages on its
/// arenas; for a gateway whose memory is many small per-connection objects, 2 MiB pages make
/// resident memory grow in steps far above what is used (measured: 642 B per idle connection
/// with THP, 252 B without; docs/benchmarks.md).
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) })?;
    Ok(())
}

/// IP_BIND_ADDRESS_NO_PORT: a socket bound to an address (port 0) gets its port at connect(),
/// so each source address can reuse ports across destinations.
pub fn bind_address_no_port(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_option(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &(1 as libc::c_int))
}

/// The pending error of a socket (SO_ERROR): how a non-blocking connect() ended.
pub fn socket_error(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a live c_int and its length.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Clock ticks per second (the unit of /proc's CPU times).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    hz.max(1) as f64
}

/// This process's user plus system CPU seconds.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: passes a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
