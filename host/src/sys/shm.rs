//! OS calls behind the shared-memory payload arenas (`crate::shm`): sealed
//! memfds, their shared mappings, hole punching, and passing fds on a
//! stream socket. Everything here is safe to call; the arena logic above it
//! has no `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU64;

use super::cvt;

/// Creates a memfd of exactly `len` bytes whose size nobody can change
/// afterwards (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): a worker that
/// holds the fd cannot shrink the file under the supervisor's mapping (an
/// access beyond the end of a file raises SIGBUS in whoever makes it), nor
/// grow it, nor add seals. Hole punching stays possible: a punched page
/// reads as zeros, never as a fault.
pub fn sealed_memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a valid C string and flags.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("memfd size overflow"))?;
    // SAFETY: ftruncate on our own memfd.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
    // SAFETY: fcntl with an integer argument on our own fd.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// Size of the file behind `fd` and whether its size is sealed (both
/// `F_SEAL_SHRINK` and `F_SEAL_GROW`): what a worker checks before it maps
/// an arena it was handed.
pub fn memfd_size_sealed(fd: &impl AsRawFd) -> io::Result<(u64, bool)> {
    // SAFETY: fstat writes into a valid, zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    // SAFETY: F_GET_SEALS only reads the fd's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let sealed = seals >= 0
        && seals & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
            == (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW);
    Ok((st.st_size.max(0) as u64, sealed))
}

/// Frees the pages of `[off, off + len)` of a memfd (they read as zeros
/// afterwards, and take no memory until written again). The size stays.
pub fn punch_hole(fd: &impl AsRawFd, off: usize, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
        return Err(io::Error::other("hole out of range"));
    };
    // SAFETY: fallocate on an fd with integer arguments.
    cvt(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            o,
            l,
        )
    })?;
    Ok(())
}

/// A shared mapping of a whole memfd whose size is sealed (so the mapping
/// is backed to its last byte for as long as it exists).
///
/// The other side of the mapping is another process that may write into
/// it at any time. So this type never hands out a reference into the
/// mapping to safe code that could be surprised by that: reads copy bytes
/// out (`read_into`), writes copy bytes in (`write_at`), and the one
/// borrow ([`SharedMap::bytes`]) is for a worker reading the region the
/// supervisor filled and will not touch until the worker answers.
pub struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes
// through bounds-checked copies or atomics.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `len` bytes of `fd` (which must be a sealed memfd at least that
    /// long), read-write or read-only.
    pub fn new(fd: &impl AsRawFd, len: usize, writable: bool) -> io::Result<SharedMap> {
        if len == 0 {
            return Err(io::Error::other("empty shared mapping"));
        }
        let (size, sealed) = memfd_size_sealed(fd)?;
        if !sealed || size < len as u64 {
            return Err(io::Error::other(format!(
                "the shared-memory file is {size} bytes{}, {len} expected",
                if sealed { "" } else { " and not sealed" }
            )));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a file whose size is sealed at
        // >= len (checked above); the result is checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Bytes mapped.
    pub fn size(&self) -> usize {
        self.len
    }

    /// Whether `[off, off + len)` lies inside the mapping (no overflow).
    pub fn contains(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Copies `src` to offset `off`; false (nothing written) if it does not
    /// fit. The mapping must be writable.
    pub fn write_at(&self, off: usize, src: &[u8]) -> bool {
        if !self.contains(off, src.len()) {
            return false;
        }
        // SAFETY: in bounds (checked); `src` is private memory, so the
        // ranges cannot overlap; the mapping is writable by construction of
        // the callers (`write_at` is only used on read-write maps). A
        // concurrent write by the other process makes the bytes garbage,
        // which only its own job sees.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(off), src.len()) };
        true
    }

    /// Copies `[off, off + len)` into `dst` (replacing its contents); false
    /// if the range is outside the mapping. One copy, after which the bytes
    /// are private: the other process changing them later cannot change
    /// what the caller validates and uses.
    pub fn read_into(&self, off: usize, len: usize, dst: &mut Vec<u8>) -> bool {
        if !self.contains(off, len) {
            return false;
        }
        dst.clear();
        dst.reserve_exact(len);
        // SAFETY: in bounds (checked); `dst` has room for `len` bytes and is
        // private memory; `set_len` covers exactly the bytes just copied.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(off), dst.as_mut_ptr(), len);
            dst.set_len(len);
        }
        true
    }

    /// Borrows `[off, off + len)`. For a worker's view of its arguments:
    /// the supervisor wrote them before sending the frame that names them
    /// and does not write that range again until the worker has answered;
    /// only the worker's own task could change them meanwhile.
    pub fn bytes(&self, off: usize, len: usize) -> Option<&[u8]> {
        if !self.contains(off, len) {
            return None;
        }
        // SAFETY: in bounds (checked), mapped for as long as `self` lives
        // (the borrow is tied to it); see above for who may write it.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) })
    }

    /// The 8-byte-aligned word at `off` as an atomic (the arena header).
    pub fn word(&self, off: usize) -> Option<&AtomicU64> {
        if !off.is_multiple_of(8) || !self.contains(off, 8) {
            return None;
        }
        // SAFETY: in bounds and aligned (the mapping is page-aligned);
        // AtomicU64 is valid for any bit pattern and only accessed
        // atomically, by either process.
        Some(unsafe { &*(self.ptr.add(off) as *const AtomicU64) })
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// One `sendmsg` of `bufs` with `fds` attached (SCM_RIGHTS), on a stream
/// socket that may be non-blocking. Returns the bytes written (the fds go
/// with the first of them); `WouldBlock` when nothing could be written.
pub fn send_with_fds_partial(
    sock: &impl AsRawFd,
    bufs: &[&[u8]],
    fds: &[RawFd],
) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
