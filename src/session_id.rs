//! The public name of a login session.
//!
//! A session is identified by the uuid in its HttpOnly cookie, which is a
//! bearer secret: whoever has it is logged in. It must never leave the cookie:
//! not in a WebSocket message (page scripts could read it), not in a log line.
//! What goes there instead is its [`SessionTag`], a prefix of its SHA-256:
//! stable for the session's life, so log lines and the page can be matched,
//! and of no use to log in.
//!
//! Plumbing below `http` and `actors`; imports neither.

use std::fmt;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Hex digits of the tag: 48 bits, enough to tell sessions apart in logs.
const TAG_HEX_DIGITS: usize = 12;

/// The non-secret name of a session, for logs and the `hello` message.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionTag([u8; TAG_HEX_DIGITS]);

impl SessionTag {
    /// The tag of the session whose cookie holds `id`.
    pub fn of(id: Uuid) -> SessionTag {
        let digest = Sha256::digest(id.as_bytes());
        let mut tag = [0u8; TAG_HEX_DIGITS];
        for (i, out) in tag.iter_mut().enumerate() {
            let byte = digest[i / 2];
            let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
            *out = b"0123456789abcdef"[nibble as usize];
        }
        SessionTag(tag)
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        // unwrap: only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap()
    }
}

impl fmt::Display for SessionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SessionTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionTag({})", self.as_str())
    }
}

impl Serialize for SessionTag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_stable_short_and_not_the_id() {
        let id = Uuid::new_v4();
        let tag = SessionTag::of(id);
        assert_eq!(tag, SessionTag::of(id));
        assert_ne!(tag, SessionTag::of(Uuid::new_v4()));
        assert_eq!(tag.as_str().len(), TAG_HEX_DIGITS);
        assert!(tag.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        let id_text = id.simple().to_string();
        assert!(!id_text.contains(tag.as_str()));
        assert_eq!(
            serde_json::to_string(&tag).unwrap(),
            format!("\"{}\"", tag.as_str())
        );
    }
}
