//! A pod UID from a new cgroup's path, as the `cgroup_mkdir` program reads it, for both
//! kubelet cgroup drivers (`<u>` is the UID with `-` replaced by `_`; `<uid>` is 36
//! characters with dashes, or 32 hex digits for a static pod):
//! - systemd: `…kubepods-pod<u>.slice`, `…kubepods-burstable-pod<u>.slice`,
//!   `…kubepods-besteffort-pod<u>.slice` (also after a cgroup-root prefix, `kubelet-kubepods-…`);
//! - cgroupfs: `pod<uid>`.
//!
//! Shared by the program and the tests: written for the verifier, every index masked into
//! the buffer (whose size is a power of two) and every loop bounded by a constant.

use crate::{PodUid, hex_value};

/// Characters of a UID with dashes, and of a static pod's UID (hex digits only).
const UUID_LEN: usize = 36;
const HEX_LEN: usize = 32;

/// The pod UID the last component of `bytes[..n]` is named after, if it is a pod cgroup of
/// either driver. `prefix` is where the kubepods path ends: nothing before it is read.
/// `None` unless `N` is a power of two and `n < N`.
#[inline(always)]
pub fn pod_uid<const N: usize>(bytes: &[u8; N], n: usize, prefix: usize) -> Option<PodUid> {
    const SLICE: &[u8] = b".slice";
    if !N.is_power_of_two() || n >= N {
        return None;
    }
    if ends_with(bytes, n, SLICE) {
        let end = n - SLICE.len();
        for len in [UUID_LEN, HEX_LEN] {
            // `<stem>-pod<u>.slice`, the stem ending in the kubepods or a QoS slice's name.
            if end < prefix + 1 + len + 4 {
                continue;
            }
            let start = end - len;
            if !ends_with(bytes, start, b"-pod") || !systemd_stem(bytes, start - 4, prefix) {
                continue;
            }
            if let Some(uid) = decode(bytes, start, len, b'_') {
                return Some(uid);
            }
        }
        return None;
    }
    for len in [UUID_LEN, HEX_LEN] {
        // `/pod<uid>`: the whole last component.
        if n < prefix + len + 4 {
            continue;
        }
        let start = n - len;
        if !ends_with(bytes, start, b"/pod") {
            continue;
        }
        if let Some(uid) = decode(bytes, start, len, b'-') {
            return Some(uid);
        }
    }
    None
}

/// Whether the name before `-pod` (ending at `end`) is `kubepods`, `kubepods-burstable` or
/// `kubepods-besteffort`, as a whole name or after a `-` (a cgroup-root prefix), and lies
/// after `prefix`.
#[inline(always)]
fn systemd_stem<const N: usize>(bytes: &[u8; N], end: usize, prefix: usize) -> bool {
    for stem in [
        b"kubepods".as_slice(),
        b"kubepods-burstable".as_slice(),
        b"kubepods-besteffort".as_slice(),
    ] {
        if end < prefix + 1 + stem.len() || !ends_with(bytes, end, stem) {
            continue;
        }
        let before = bytes[(end - stem.len() - 1) & (N - 1)];
        if before == b'/' || before == b'-' {
            return true;
        }
    }
    false
}

/// Whether `bytes[..end]` ends with `tail`.
#[inline(always)]
fn ends_with<const N: usize>(bytes: &[u8; N], end: usize, tail: &[u8]) -> bool {
    if end < tail.len() {
        return false;
    }
    let start = end - tail.len();
    for (i, c) in tail.iter().enumerate() {
        if bytes[(start + i) & (N - 1)] != *c {
            return false;
        }
    }
    true
}

/// The UID written at `bytes[start..start + len]`: 32 hex digits, with `sep` at the four
/// places of a UUID's dashes when `len` is [`UUID_LEN`].
#[inline(always)]
fn decode<const N: usize>(bytes: &[u8; N], start: usize, len: usize, sep: u8) -> Option<PodUid> {
    let mut uid = PodUid::default();
    let mut nibble = 0usize;
    for i in 0..UUID_LEN {
        if i >= len {
            break;
        }
        let c = bytes[(start + i) & (N - 1)];
        if len == UUID_LEN && matches!(i, 8 | 13 | 18 | 23) {
            if c != sep {
                return None;
            }
            continue;
        }
        let v = hex_value(c)?;
        let byte = &mut uid.bytes[(nibble / 2) & 15];
        *byte = (*byte << 4) | v;
        nibble += 1;
    }
    (nibble == HEX_LEN).then_some(uid)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::String};

    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
    const PREFIX: &str = "/test-1/kubepods.slice";

    /// The UID of `path`, below the kubepods cgroup [`PREFIX`] (or `/test-1/kubepods`,
    /// `/k/kubelet.slice/kubelet-kubepods.slice`, whichever it starts with).
    fn parse(path: &String) -> Option<PodUid> {
        let mut buf = [0u8; 512];
        buf[..path.len()].copy_from_slice(path.as_bytes());
        let prefix = [
            PREFIX,
            "/test-1/kubepods",
            "/t/kubepods",
            "/k/kubelet.slice/kubelet-kubepods.slice",
        ]
        .iter()
        .find(|p| path.starts_with(&format!("{p}/")))
        .map_or(0, |p| p.len());
        pod_uid(&buf, path.len(), prefix)
    }

    #[test]
    fn every_layout_of_both_drivers_gives_the_uid() {
        let want = PodUid::parse(UID);
        let u = UID.replace('-', "_");
        for path in [
            format!("{PREFIX}/kubepods-pod{u}.slice"),
            format!("{PREFIX}/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
            format!("{PREFIX}/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"),
            format!(
                "/k/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{u}.slice"
            ),
            format!("/test-1/kubepods/pod{UID}"),
            format!("/test-1/kubepods/burstable/pod{UID}"),
            format!("/test-1/kubepods/besteffort/pod{UID}"),
        ] {
            assert_eq!(parse(&path), want, "{path}");
        }
        let static_pod = "3c0b8e0e1f8b2c7fa1d2e3f4a5b6c7d8";
        let want = PodUid::parse(static_pod);
        assert_eq!(parse(&format!("/t/kubepods/pod{static_pod}")), want);
        assert_eq!(
            parse(&format!(
                "{PREFIX}/kubepods-burstable.slice/kubepods-burstable-pod{static_pod}.slice"
            )),
            want
        );
    }

    #[test]
    fn other_cgroups_give_none() {
        let u = UID.replace('-', "_");
        let container = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
        for path in [
            format!("{PREFIX}/kubepods-burstable.slice"),
            format!("{PREFIX}/kubepods-pod{u}.slice/cri-containerd-{container}.scope"),
            format!("/test-1/kubepods/pod{UID}/{container}"),
            // The wrong separators for the driver.
            format!("{PREFIX}/kubepods-pod{UID}.slice"),
            format!("/test-1/kubepods/pod{u}"),
            // Not a kubelet name.
            format!("{PREFIX}/user-pod{u}.slice"),
            format!("{PREFIX}/kubepodsx-pod{u}.slice"),
            format!("/test-1/kubepods/xpod{UID}"),
            format!("/test-1/kubepods/pod{UID}.slice"),
            // Too short, too long, not hex.
            format!("/test-1/kubepods/pod{}", &UID[1..]),
            format!("/test-1/kubepods/pod0{UID}"),
            format!("/test-1/kubepods/pod{}", UID.replace('a', "g")),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
    }

    #[test]
    fn nothing_before_the_kubepods_path_is_read_and_bad_lengths_give_none() {
        let path = format!("/kubepods-pod{}.slice", UID.replace('-', "_"));
        let mut buf = [0u8; 512];
        buf[..path.len()].copy_from_slice(path.as_bytes());
        // The stem would sit inside the prefix.
        assert_eq!(pod_uid(&buf, path.len(), 5), None);
        assert_eq!(pod_uid(&buf, 512, 0), None, "n must be below the buffer");
        let mut odd = [0u8; 500];
        odd[..path.len()].copy_from_slice(path.as_bytes());
        assert_eq!(pod_uid(&odd, path.len(), 0), None, "not a power of two");
    }
}
