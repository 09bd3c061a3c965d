//! Every entry of a BPF hash map (per-CPU or not), read in batches: a handful of `bpf(2)`
//! calls for the whole map instead of two per entry.
//!
//! The probes' maps hold up to tens of thousands of keys (the peers' at 100 namespaces × 50
//! peers: ~10,000, and the histograms' as many): aya 0.14 walks a map with one
//! `BPF_MAP_GET_NEXT_KEY` and one `BPF_MAP_LOOKUP_ELEM` per key, and allocates each per-CPU
//! value on its own. `BPF_MAP_LOOKUP_BATCH` (Linux 5.6) copies many entries a call into one
//! buffer. Hand-written because aya 0.14 has no batch operations; a kernel without them
//! (EINVAL) is walked key by key here, the same buffer layout either way.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result, ensure};
use aya::Pod;
use aya::maps::{MapData, MapType};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// At most this much buffer per batch: with many CPUs a per-CPU entry is large (96 CPUs × 80
/// bytes = 7.5 KiB), so fewer entries are read a call rather than the buffer growing.
const BATCH_BYTES: usize = 1 << 20;
const MAX_BATCH: usize = 4096;
/// The kernel's own "not supported" (not in libc), which bpf(2) can return.
const ENOTSUPP: i32 = 524;

/// How a map holds its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// One value per key (`BPF_MAP_TYPE_HASH`, `LRU_HASH`).
    Shared,
    /// One value per possible CPU (`BPF_MAP_TYPE_PERCPU_HASH`).
    PerCpu,
}

/// Calls `each` with every entry of `map` (keys of type `K`, values of type `V`: one, or one
/// per possible CPU). An entry deleted while the map is read may be missed.
pub fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    values: Values,
    each: impl FnMut(K, &[V]),
) -> Result<()> {
    walk(map, values, Walk::Batches(None), each)
}

/// How a map is read: in batches (of a size chosen from the entry's, or this many entries at
/// first), or key by key.
#[derive(Clone, Copy)]
enum Walk {
    Batches(Option<usize>),
    KeyByKey,
}

fn walk<K: Pod, V: Pod>(
    map: &MapData,
    values: Values,
    how: Walk,
    mut each: impl FnMut(K, &[V]),
) -> Result<()> {
    // The kernel writes the map's own sizes into the buffers: they must be `K`'s and `V`'s.
    let info = map.info().context("BPF map info")?;
    let per_cpu = matches!(
        info.map_type(),
        Ok(MapType::PerCpuHash | MapType::LruPerCpuHash)
    );
    ensure!(
        info.key_size() as usize == size_of::<K>()
            && info.value_size() as usize == size_of::<V>()
            && per_cpu == (values == Values::PerCpu),
        "BPF map of {}-byte keys and {}-byte values ({}) read as {}-byte keys and {}-byte values ({values:?})",
        info.key_size(),
        info.value_size(),
        if per_cpu { "per CPU" } else { "shared" },
        size_of::<K>(),
        size_of::<V>(),
    );
    let cpus = match values {
        Values::Shared => 1,
        Values::PerCpu => aya::util::nr_cpus()
            .map_err(|(path, e)| anyhow::anyhow!("{path}: {e}"))
            .context("possible CPUs")?,
    };
    // The kernel copies per-CPU values at 8-byte strides; a shared value as it is.
    let stride = match values {
        Values::Shared => size_of::<V>(),
        Values::PerCpu => size_of::<V>().next_multiple_of(8),
    };
    let entry = stride * cpus;
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut batch = match how {
        Walk::Batches(Some(n)) => n.max(1),
        Walk::Batches(None) => (BATCH_BYTES / entry.max(1)).clamp(16, MAX_BATCH),
        Walk::KeyByKey => 1,
    };
    let mut keys = vec![0u8; batch * size_of::<K>()];
    let mut buf = vec![0u8; batch * entry];
    let mut decoded: Vec<V> = Vec::with_capacity(cpus);
    let mut emit = |keys: &[u8], buf: &[u8], n: usize| {
        for i in 0..n {
            let key = read::<K>(&keys[i * size_of::<K>()..]);
            decoded.clear();
            let at = i * entry;
            decoded.extend((0..cpus).map(|c| read::<V>(&buf[at + c * stride..])));
            each(key, &decoded);
        }
    };

    // The position the kernel returns after each batch (for hash maps, a bucket index).
    let mut token = [0u8; 8];
    let mut first = true;
    let mut how = how;
    loop {
        if let Walk::KeyByKey = how {
            return key_by_key(fd, size_of::<K>(), &mut buf, |key, buf| emit(key, buf, 1));
        }
        let mut attr = zeroed_attr();
        attr.batch.in_batch = if first { 0 } else { token.as_ptr() as u64 };
        attr.batch.out_batch = token.as_mut_ptr() as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = buf.as_mut_ptr() as u64;
        attr.batch.count = batch as u32;
        attr.batch.map_fd = fd;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote the count of entries copied to the union's batch member.
        let n = (unsafe { attr.batch.count } as usize).min(batch);
        match result {
            Ok(()) => emit(&keys, &buf, n),
            // The end of the map: the last entries come with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                emit(&keys, &buf, n);
                return Ok(());
            }
            // One bucket holds more entries than a batch: read it with a larger one.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && batch < 1 << 20 => {
                batch *= 2;
                keys.resize(batch * size_of::<K>(), 0);
                buf.resize(batch * entry, 0);
                continue;
            }
            Err(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
            {
                // A kernel before 5.6, or a map type without batches.
                how = Walk::KeyByKey;
                continue;
            }
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_BATCH"),
        }
        first = false;
    }
}

/// The map walked one key at a time (`GET_NEXT_KEY`, then `LOOKUP_ELEM`), each entry laid
/// out as the first of a batch.
fn key_by_key(
    fd: u32,
    key_size: usize,
    buf: &mut [u8],
    mut emit: impl FnMut(&[u8], &[u8]),
) -> Result<()> {
    let mut previous: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; key_size];
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = fd;
        attr.__bindgen_anon_2.key = previous.as_ref().map_or(0, |p| p.as_ptr() as u64);
        attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
        match bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
        }
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = fd;
        attr.__bindgen_anon_2.key = next.as_ptr() as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = buf.as_mut_ptr() as u64;
        match bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => emit(&next, buf),
            // Deleted between listing and reading: skipped.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("BPF_MAP_LOOKUP_ELEM"),
        }
        previous = Some(next);
    }
}

fn read<T: Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: `bytes` holds at least `size_of::<T>()` bytes (checked above), and `T: Pod` is
    // valid for any bit pattern; the read does not assume alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a union of plain integers, valid all zero.
    unsafe { std::mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    // SAFETY: bpf(2) reads and writes `size_of::<bpf_attr>()` bytes of `attr`, which lives for
    // the call, and the buffers its pointers name, which the callers keep alive and large
    // enough for the count they pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    /// A map of `entries` keys made with bpf(2) (no object needed), or `None` where this
    /// process may not make BPF maps.
    fn map(map_type: u32, value_size: u32, entries: u32) -> Option<MapData> {
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integers to the union's map-creation member.
        let create = unsafe { &mut attr.__bindgen_anon_1 };
        create.map_type = map_type;
        create.key_size = 8;
        create.value_size = value_size;
        create.max_entries = entries;
        // SAFETY: as in `bpf`; BPF_MAP_CREATE returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_CREATE as libc::c_long,
                std::ptr::from_mut(&mut attr),
                size_of::<bpf_attr>(),
            )
        };
        if fd < 0 {
            eprintln!("no BPF map: {}", io::Error::last_os_error());
            return None;
        }
        // SAFETY: a new descriptor nothing else owns.
        MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).ok()
    }

    fn update(map: &MapData, key: u64, value: &[u8]) {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_2.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        attr.__bindgen_anon_2.key = std::ptr::from_ref(&key) as u64;
        attr.__bindgen_anon_2.__bindgen_anon_1.value = value.as_ptr() as u64;
        bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).unwrap_or_else(|e| panic!("update: {e}"));
    }

    /// Every entry written with bpf(2) is read back (12-byte per-CPU values: at 16-byte
    /// strides), by every walk: in batches (with a batch too
    /// small for a bucket at first, which the kernel refuses with ENOSPC), and key by key.
    #[test]
    fn every_entry_is_read_back_in_batches_and_key_by_key() {
        const PERCPU_HASH: u32 = 5;
        const HASH: u32 = 1;
        const N: u64 = 5000;
        let Some(per_cpu) = map(PERCPU_HASH, 12, N as u32) else {
            return;
        };
        let cpus = aya::util::nr_cpus().unwrap_or_else(|(p, e)| panic!("{p}: {e}"));
        for key in 0..N {
            let mut value = vec![0u8; 16 * cpus];
            for cpu in 0..cpus {
                let at = cpu * 16;
                value[at..at + 4].copy_from_slice(&(key as u32).to_ne_bytes());
                value[at + 4..at + 12].copy_from_slice(&(key * 100 + cpu as u64).to_ne_bytes());
            }
            update(&per_cpu, key, &value);
        }
        let shared = map(HASH, 8, N as u32).unwrap_or_else(|| panic!("no second map"));
        for key in 0..N {
            update(&shared, key, &(key * 7).to_ne_bytes());
        }
        for how in [Walk::Batches(None), Walk::Batches(Some(1)), Walk::KeyByKey] {
            let mut seen = vec![0u32; N as usize];
            walk(
                &per_cpu,
                Values::PerCpu,
                how,
                |key: u64, values: &[[u8; 12]]| {
                    assert_eq!(values.len(), cpus);
                    for (cpu, v) in values.iter().enumerate() {
                        let a = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
                        let b =
                            u64::from_ne_bytes([v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11]]);
                        assert_eq!((a, b), (key as u32, key * 100 + cpu as u64));
                    }
                    seen[key as usize] += 1;
                },
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
            assert!(seen.iter().all(|&n| n == 1), "each key once");

            let wrong = walk(&shared, Values::Shared, how, |_: u64, _: &[u32]| {});
            assert!(
                wrong.is_err_and(|e| format!("{e:#}")
                    .contains("8-byte values (shared) read as 8-byte keys and 4-byte values")),
                "a map read with the wrong value type is refused"
            );
            let wrong = walk(&per_cpu, Values::Shared, how, |_: u64, _: &[[u8; 12]]| {});
            assert!(wrong.is_err(), "a per-CPU map read as shared is refused");

            let mut sum = 0;
            let mut count = 0;
            walk(&shared, Values::Shared, how, |key: u64, v: &[u64]| {
                assert_eq!(v, [key * 7]);
                sum += key;
                count += 1;
            })
            .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!((count, sum), (N, N * (N - 1) / 2));
        }
    }
}
