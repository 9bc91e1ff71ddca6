//! The memory limit of the container (or any cgroup) this process runs in, read from the Linux
//! cgroup file system: this module owns finding the process's own memory cgroup and reading the
//! limit that applies to it.
//!
//! The process's cgroup is named in `/proc/self/cgroup` (cgroups(7)): `0::/path` for cgroup v2,
//! `N:memory[,…]:/path` for the v1 `memory` hierarchy. Where that hierarchy is mounted comes from
//! `/proc/self/mountinfo` (proc(5): mount point, the mount's root inside the hierarchy, and the
//! file-system type `cgroup2`, or `cgroup` with the `memory` super option). The limit files are
//! `memory.max` (v2, `max` = none) and `memory.limit_in_bytes` (v1, about 2^63 = none).
//!
//! The limit that applies is the lowest one on the way from the process's cgroup up to the
//! hierarchy's root as far as it is mounted (a pod-level limit above the container's counts
//! too), the rule of cgroup v2's `memory.max` (Documentation/admin-guide/cgroup-v2.rst, "Top-down
//! constraint") and of v1 with `use_hierarchy`. Inside a cgroup namespace (a Kubernetes container
//! on cgroup v2) the process's cgroup is the mount's root, `/sys/fs/cgroup`; without one (cgroup
//! v1, or v2 without a namespace) it is a directory below it, which a fixed path at the mount's
//! root would miss.

use std::path::{Path, PathBuf};

/// A cgroup hierarchy version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1, the hierarchy holding the `memory` controller.
    V1,
    /// cgroup v2, the unified hierarchy.
    V2,
}

impl Version {
    /// The file holding a cgroup's memory limit.
    pub fn limit_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }
}

/// A mounted cgroup hierarchy that may hold the memory controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub version: Version,
    /// The cgroup of the hierarchy that the mount point shows (`/` unless a container runtime
    /// bind-mounted a sub-tree).
    pub root: String,
    pub mount_point: PathBuf,
}

/// A v1 limit at or above this (1 PiB) means unlimited (v1 reports about 2^63, rounded down to
/// the page size).
const V1_UNLIMITED: u64 = 1 << 50;

/// The memory hierarchies in `mountinfo` (the contents of `/proc/self/mountinfo`): v1 mounts
/// with the `memory` controller first (where there is one, v2 does not hold the controller), then
/// v2 mounts.
pub fn memory_mounts(mountinfo: &str) -> Vec<Mount> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional…] - fstype source super-options`
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mut after = after.split(' ');
        let fstype = after.next().unwrap_or("");
        let super_options = after.nth(1).unwrap_or("");
        let mount = |version| Mount {
            version,
            root: unescape(root),
            mount_point: PathBuf::from(unescape(mount_point)),
        };
        match fstype {
            "cgroup2" => v2.push(mount(Version::V2)),
            "cgroup" if super_options.split(',').any(|o| o == "memory") => {
                v1.push(mount(Version::V1))
            }
            _ => {}
        }
    }
    v1.extend(v2);
    v1
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's cgroup in hierarchy `version`, from `proc_cgroup` (the contents of
/// `/proc/self/cgroup`); `None` when it names none.
pub fn cgroup_path(proc_cgroup: &str, version: Version) -> Option<&str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
        };
        matches.then_some(path)
    })
}

/// The directories whose limits apply to cgroup `path` under `mount`: the cgroup's own, then each
/// parent up to the mount point. A path outside the mount's root (a cgroup namespace whose root is
/// not the mount's) is taken as the mount point itself.
pub fn limit_dirs(mount: &Mount, path: &str) -> Vec<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let relative = match path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => "",
    };
    let mut dir = mount.mount_point.clone();
    let mut dirs = vec![dir.clone()];
    for part in relative.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return vec![mount.mount_point.clone()];
        }
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs.reverse();
    dirs
}

/// A limit file's contents → bytes; `None` for no limit (`max`, a v1 value of 1 PiB or more, 0)
/// or contents that are not a number.
pub fn parse_limit(version: Version, contents: &str) -> Option<u64> {
    let n: u64 = contents.trim().parse().ok()?;
    match version {
        Version::V2 => Some(n),
        Version::V1 => Some(n).filter(|&n| n < V1_UNLIMITED),
    }
    .filter(|&n| n > 0)
}

/// The limit that applies given the contents of each limit file on the way up (`None`: the file
/// is absent): `Some(lowest limit)`, `Some(None)` when none is set; `None` when no file was there
/// at all, so this hierarchy does not hold the memory controller.
pub fn lowest_limit(version: Version, files: &[Option<String>]) -> Option<Option<u64>> {
    if files.iter().all(Option::is_none) {
        return None;
    }
    Some(
        files
            .iter()
            .flatten()
            .filter_map(|c| parse_limit(version, c))
            .min(),
    )
}

/// The memory limit of this process's cgroup in bytes, `None` when there is none or no cgroup
/// file system can be read (not Linux, `/proc` or `/sys/fs/cgroup` not mounted).
pub fn memory_limit() -> Option<u64> {
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let mountinfo = read(Path::new("/proc/self/mountinfo")).unwrap_or_default();
    let proc_cgroup = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    for mount in memory_mounts(&mountinfo) {
        let Some(path) = cgroup_path(&proc_cgroup, mount.version) else {
            continue;
        };
        let files: Vec<Option<String>> = limit_dirs(&mount, path)
            .iter()
            .map(|dir| read(&dir.join(mount.version.limit_file())))
            .collect();
        if let Some(limit) = lowest_limit(mount.version, &files) {
            return limit;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const V2: &str = "\
22 1 0:21 / / rw - overlay overlay rw
29 22 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - cgroup2 cgroup rw,nsdelegate
";
    const DOCKER_V1: &str = "\
1 0 0:1 / / rw - overlay overlay rw
40 31 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid master:15 - cgroup cgroup rw,memory,hugetlb
";

    fn mount(version: Version, root: &str, at: &str) -> Mount {
        Mount {
            version,
            root: root.into(),
            mount_point: at.into(),
        }
    }

    #[test]
    fn mounts_holding_memory_v1_first() {
        let table: [(&str, Vec<Mount>); 4] = [
            (
                HYBRID,
                vec![
                    mount(Version::V1, "/", "/sys/fs/cgroup/memory"),
                    mount(Version::V2, "/", "/sys/fs/cgroup/unified"),
                ],
            ),
            (V2, vec![mount(Version::V2, "/", "/sys/fs/cgroup")]),
            (
                DOCKER_V1,
                vec![mount(Version::V1, "/docker/abc", "/sys/fs/cgroup/memory")],
            ),
            ("", vec![]),
        ];
        for (mountinfo, want) in table {
            assert_eq!(memory_mounts(mountinfo), want, "{mountinfo}");
        }
        let spaced = "9 1 0:9 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            memory_mounts(spaced)[0].mount_point,
            PathBuf::from("/mnt/my cgroups")
        );
    }

    #[test]
    fn cgroup_paths() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/42\n0::/\n";
        let merged = "5:memory,hugetlb:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n";
        let table = [
            (hybrid, Version::V1, Some("/process_api/42")),
            (hybrid, Version::V2, Some("/")),
            (merged, Version::V1, Some("/kubepods/pod1/c1")),
            (
                "0::/system.slice/x.service\n",
                Version::V2,
                Some("/system.slice/x.service"),
            ),
            ("0::/system.slice/x.service\n", Version::V1, None),
            ("4:cpu:/a\n", Version::V2, None),
            ("", Version::V2, None),
        ];
        for (contents, version, want) in table {
            assert_eq!(
                cgroup_path(contents, version),
                want,
                "{contents:?} {version:?}"
            );
        }
    }

    #[test]
    fn limit_dirs_walk_up_to_the_mount_point() {
        let at = |p: &[&str]| p.iter().map(PathBuf::from).collect::<Vec<_>>();
        let root_v2 = mount(Version::V2, "/", "/sys/fs/cgroup");
        let table = [
            (root_v2.clone(), "/", at(&["/sys/fs/cgroup"])),
            (
                root_v2.clone(),
                "/kubepods/pod1/c1",
                at(&[
                    "/sys/fs/cgroup/kubepods/pod1/c1",
                    "/sys/fs/cgroup/kubepods/pod1",
                    "/sys/fs/cgroup/kubepods",
                    "/sys/fs/cgroup",
                ]),
            ),
            (
                mount(Version::V1, "/docker/abc", "/sys/fs/cgroup/memory"),
                "/docker/abc",
                at(&["/sys/fs/cgroup/memory"]),
            ),
            (
                mount(Version::V1, "/docker/abc", "/sys/fs/cgroup/memory"),
                "/docker/abc/sub",
                at(&["/sys/fs/cgroup/memory/sub", "/sys/fs/cgroup/memory"]),
            ),
            // A namespace whose root the mount does not show, or a path escaping it.
            (
                mount(Version::V1, "/docker/abc", "/sys/fs/cgroup/memory"),
                "/other",
                at(&["/sys/fs/cgroup/memory"]),
            ),
            (root_v2.clone(), "/../x", at(&["/sys/fs/cgroup"])),
            (
                root_v2,
                "/docker/abcdef",
                at(&[
                    "/sys/fs/cgroup/docker/abcdef",
                    "/sys/fs/cgroup/docker",
                    "/sys/fs/cgroup",
                ]),
            ),
        ];
        for (m, path, want) in table {
            assert_eq!(limit_dirs(&m, path), want, "{m:?} {path}");
        }
        // A root that is a prefix of another name is not that cgroup's parent.
        let m = mount(Version::V1, "/docker/abc", "/m");
        assert_eq!(limit_dirs(&m, "/docker/abcdef"), at(&["/m"]));
    }

    #[test]
    fn limits_parse_and_the_lowest_applies() {
        let parse = [
            (Version::V2, "536870912\n", Some(536_870_912)),
            (Version::V2, "max\n", None),
            (Version::V2, "0", None),
            (Version::V2, "garbage", None),
            (Version::V1, "1073741824\n", Some(1_073_741_824)),
            (Version::V1, "9223372036854771712\n", None),
            (Version::V1, "-1", None),
        ];
        for (version, contents, want) in parse {
            assert_eq!(
                parse_limit(version, contents),
                want,
                "{version:?} {contents:?}"
            );
        }
        let s = |t: &str| Some(t.to_owned());
        let lowest = [
            (
                Version::V2,
                vec![s("max"), s("300000000"), s("max")],
                Some(Some(300_000_000)),
            ),
            (
                Version::V2,
                vec![s("536870912"), s("1073741824")],
                Some(Some(536_870_912)),
            ),
            (Version::V2, vec![s("max"), None], Some(None)),
            (Version::V2, vec![None, None], None),
            (Version::V2, vec![], None),
            (
                Version::V1,
                vec![s("9223372036854771712"), s("314572800")],
                Some(Some(314_572_800)),
            ),
        ];
        for (version, files, want) in lowest {
            assert_eq!(lowest_limit(version, &files), want, "{files:?}");
        }
    }
}
