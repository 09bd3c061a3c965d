//! Pod UIDs from cgroup paths: the kubelet puts every container of a Pod under a cgroup named
//! after the Pod's UID, with either cgroup driver and either cgroup version:
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/…`
//!   (`kubepods-pod<uid>.slice` for Guaranteed Pods);
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<container>` (`/kubepods/pod<uid>/…`).
//!
//! `/proc/PID/cgroup` holds one such path per hierarchy (`0::/…` on v2, `N:ctrl:/…` on v1).

/// The Pod UID in the cgroup file of a process, if it belongs to a Pod.
pub fn pod_uid(cgroup_file: &str) -> Option<String> {
    cgroup_file.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        if !path.contains("kubepods") {
            return None;
        }
        path.split('/').find_map(|part| {
            let rest = match part.strip_prefix("pod") {
                Some(rest) => rest,
                None => &part[part.rfind("-pod")? + 4..],
            };
            uid_from(rest)
        })
    })
}

/// A UID at the start of `s` (with `-` or, from the systemd driver, `_` between groups),
/// normalized to the API's form with `-`.
fn uid_from(s: &str) -> Option<String> {
    let s = s.strip_suffix(".slice").unwrap_or(s);
    let candidate = s.get(..36)?;
    if s.len() != 36 {
        return None;
    }
    let ok = candidate.char_indices().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-' || c == '_',
        _ => c.is_ascii_hexdigit(),
    });
    ok.then(|| candidate.replace('_', "-").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f9c2a5e-7b1d-4c3e-9a8b-1234567890ab";

    #[test]
    fn systemd_driver_v2() {
        let f = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f9c2a5e_7b1d_4c3e_9a8b_1234567890ab.slice/cri-containerd-abc.scope\n";
        assert_eq!(pod_uid(f).as_deref(), Some(UID));
    }

    #[test]
    fn systemd_driver_guaranteed_v1() {
        let f = "12:pids:/kubepods.slice/kubepods-pod0f9c2a5e_7b1d_4c3e_9a8b_1234567890ab.slice/docker-1.scope\n1:name=systemd:/init.scope\n";
        assert_eq!(pod_uid(f).as_deref(), Some(UID));
    }

    #[test]
    fn cgroupfs_driver() {
        let f = "0::/kubepods/burstable/pod0f9c2a5e-7b1d-4c3e-9a8b-1234567890ab/ctr\n";
        assert_eq!(pod_uid(f).as_deref(), Some(UID));
        let f = "4:memory:/kubepods/pod0F9C2A5E-7B1D-4C3E-9A8B-1234567890AB/ctr\n";
        assert_eq!(pod_uid(f).as_deref(), Some(UID));
    }

    #[test]
    fn not_a_pod() {
        for f in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/kubepods.slice/kubepods-besteffort.slice\n",
            "0::/kubepods/podnotauid/x\n",
            "0::/system.slice/pod0f9c2a5e-7b1d-4c3e-9a8b-1234567890ab\n",
            "",
            "garbage",
        ] {
            assert_eq!(pod_uid(f), None, "{f:?}");
        }
    }
}
