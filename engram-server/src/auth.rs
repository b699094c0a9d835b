//! Who may attach: the peer's credentials (`SO_PEERCRED`) against an allow rule. The
//! socket's file mode is the first gate (0600, or 0660 with a group); this is the second,
//! so a socket made reachable by mistake (a loose mode, a bind mount into a container)
//! still serves only the allowed users.

use std::os::unix::net::UnixStream;
use std::path::Path;

use engram_client::error::{Result, ServiceError, io};

/// Most groups read from `/proc/PID/status` for one peer.
pub const MAX_PEER_GROUPS: usize = 65_536;

/// The allow rule: the server's own user and root always; then listed users; then
/// members (primary or supplementary) of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowRule {
    /// Users allowed besides the server's own and root.
    pub uids: Vec<u32>,
    /// A group whose members are allowed.
    pub gid: Option<u32>,
}

/// A connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's user id.
    pub uid: u32,
    /// The peer's primary group id.
    pub gid: u32,
}

/// The peer's credentials as the kernel recorded them at `connect`.
pub fn peer(sock: &UnixStream, path: &Path) -> Result<Peer> {
    let c = rustix::net::sockopt::socket_peercred(sock)
        .map_err(|e| io("SO_PEERCRED", path, e.into()))?;
    Ok(Peer {
        pid: c.pid.as_raw_nonzero().get(),
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
    })
}

/// Supplementary groups of process `pid` (`Groups:` in `/proc/PID/status`); none when
/// unreadable.
fn groups_of(pid: i32) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .take(MAX_PEER_GROUPS)
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl AllowRule {
    /// Why `peer` may not attach to a server running as `owner`, or `None`.
    pub fn refuses(&self, owner: u32, peer: &Peer) -> Option<String> {
        if peer.uid == owner || peer.uid == 0 || self.uids.contains(&peer.uid) {
            return None;
        }
        if let Some(g) = self.gid
            && (peer.gid == g || groups_of(peer.pid).contains(&g))
        {
            return None;
        }
        Some(format!(
            "uid {} (pid {}) is not allowed: the server runs as uid {owner} and allows {}",
            peer.uid,
            peer.pid,
            self.describe()
        ))
    }

    fn describe(&self) -> String {
        let mut parts = vec!["its own user and root".to_string()];
        if !self.uids.is_empty() {
            parts.push(format!("uids {:?} (--allow-uid)", self.uids));
        }
        if let Some(g) = self.gid {
            parts.push(format!("members of gid {g} (--group)"));
        }
        parts.join(", ")
    }
}

/// A group by name (`/etc/group`) or number.
pub fn parse_group(s: &str) -> Result<u32> {
    if let Ok(g) = s.parse::<u32>() {
        return Ok(g);
    }
    let path = Path::new("/etc/group");
    let text = std::fs::read_to_string(path).map_err(|e| io("read", path, e))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            (name == s).then_some(gid)
        })
        .next()
        .ok_or_else(|| ServiceError::Invalid {
            what: "group",
            reason: format!("{s:?} is neither a number nor a group in /etc/group"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_allows_owner_root_listed_and_group() {
        let rule = AllowRule {
            uids: vec![1001],
            gid: Some(500),
        };
        let p = |uid, gid| Peer {
            pid: i32::MAX,
            uid,
            gid,
        };
        assert!(rule.refuses(1000, &p(1000, 1)).is_none());
        assert!(rule.refuses(1000, &p(0, 1)).is_none());
        assert!(rule.refuses(1000, &p(1001, 1)).is_none());
        assert!(rule.refuses(1000, &p(1002, 500)).is_none());
        let why = rule.refuses(1000, &p(1002, 1)).expect("refused");
        assert!(why.contains("uid 1002"), "{why}");
        assert!(AllowRule::default().refuses(1000, &p(1001, 500)).is_some());
    }

    #[test]
    fn groups_parse_by_number_and_name() {
        assert_eq!(parse_group("42").ok(), Some(42));
        assert_eq!(parse_group("root").ok(), Some(0));
        assert!(parse_group("no-such-group-here").is_err());
    }
}
