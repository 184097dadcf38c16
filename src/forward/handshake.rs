//! The shared-key handshake (`research/protocols.md` §A.6): the server sends HELO, the client
//! answers PING, the server answers PONG; both prove they know the shared key. Nonces, salts
//! and the auth salt may arrive as raw bytes inside msgpack `str` (Fluent Bit): they are
//! bytes here, never UTF-8-checked.

use sha2::{Digest, Sha512};

/// `hex(SHA512(salt ‖ hostname ‖ nonce ‖ shared_key))`: PING uses the client's hostname,
/// PONG the server's, both with the client's salt.
pub fn shared_key_digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(key);
    hex(&h.finalize())
}

/// `hex(SHA512(auth_salt ‖ username ‖ password))`.
pub fn password_digest(auth: &[u8], username: &[u8], password: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(auth);
    h.update(username);
    h.update(password);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Compares digests without an early exit.
pub fn digests_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `["HELO", {"nonce", "auth", "keepalive"}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// Random bytes the digests cover.
    pub nonce: Vec<u8>,
    /// Salt of the password digest; empty when no user authentication is required.
    pub auth: Vec<u8>,
    /// False: the server closes after each request.
    pub keepalive: bool,
}

/// `["PING", hostname, salt, digest, username, password_digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The client's hostname.
    pub hostname: Vec<u8>,
    /// The client's salt.
    pub salt: Vec<u8>,
    /// Shared-key digest.
    pub digest: Vec<u8>,
    /// User name (empty without user authentication).
    pub username: Vec<u8>,
    /// Password digest (empty without user authentication).
    pub password_digest: Vec<u8>,
}

/// `["PONG", ok, reason, hostname, digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// Authentication succeeded.
    pub ok: bool,
    /// Why not.
    pub reason: String,
    /// The server's hostname.
    pub hostname: Vec<u8>,
    /// Shared-key digest over the server's hostname.
    pub digest: Vec<u8>,
}

/// A handshake message that is not what the protocol says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handshake: {0}")]
pub struct HandshakeError(pub String);

fn bytes(v: &rmpv::Value) -> Option<Vec<u8>> {
    match v {
        rmpv::Value::String(s) => Some(s.as_bytes().to_vec()),
        rmpv::Value::Binary(b) => Some(b.clone()),
        _ => None,
    }
}

fn parse(frame: &[u8], name: &str, len: usize) -> Result<Vec<rmpv::Value>, HandshakeError> {
    let value = rmpv::decode::read_value(&mut &frame[..])
        .map_err(|e| HandshakeError(format!("expected {name}, got invalid MessagePack: {e}")))?;
    match value {
        rmpv::Value::Array(items) if items.len() == len && items[0].as_str() == Some(name) => {
            Ok(items)
        }
        other => Err(HandshakeError(format!(
            "expected a {name} message (an array of {len} starting with {name:?}), got {}",
            truncate(&other.to_string())
        ))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn field(items: &[rmpv::Value], i: usize, what: &str) -> Result<Vec<u8>, HandshakeError> {
    items
        .get(i)
        .and_then(bytes)
        .ok_or_else(|| HandshakeError(format!("{what} must be a string")))
}

impl Helo {
    /// Encodes (`bin` values, like fluentd).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let _ = rmp::encode::write_array_len(&mut b, 2);
        let _ = rmp::encode::write_str(&mut b, "HELO");
        let _ = rmp::encode::write_map_len(&mut b, 3);
        let _ = rmp::encode::write_str(&mut b, "nonce");
        let _ = rmp::encode::write_bin(&mut b, &self.nonce);
        let _ = rmp::encode::write_str(&mut b, "auth");
        let _ = rmp::encode::write_bin(&mut b, &self.auth);
        let _ = rmp::encode::write_str(&mut b, "keepalive");
        let _ = rmp::encode::write_bool(&mut b, self.keepalive);
        b
    }

    /// Decodes; `keepalive` defaults to true, `auth` to empty.
    pub fn decode(frame: &[u8]) -> Result<Helo, HandshakeError> {
        let items = parse(frame, "HELO", 2)?;
        let rmpv::Value::Map(options) = &items[1] else {
            return Err(HandshakeError("HELO options must be a map".into()));
        };
        let mut helo = Helo {
            nonce: Vec::new(),
            auth: Vec::new(),
            keepalive: true,
        };
        let mut nonce = false;
        for (k, v) in options {
            match (k.as_str(), v) {
                (Some("nonce"), v) => {
                    helo.nonce = bytes(v)
                        .ok_or_else(|| HandshakeError("HELO nonce must be a string".into()))?;
                    nonce = true;
                }
                (Some("auth"), v) => helo.auth = bytes(v).unwrap_or_default(),
                (Some("keepalive"), rmpv::Value::Boolean(k)) => helo.keepalive = *k,
                _ => {}
            }
        }
        if !nonce {
            return Err(HandshakeError("HELO has no nonce".into()));
        }
        Ok(helo)
    }
}

impl Ping {
    /// The client's PING for this HELO.
    pub fn new(helo: &Helo, hostname: &str, key: &[u8], username: &str, password: &str) -> Ping {
        let salt = hex(&super::random_bytes::<16>()).into_bytes();
        let (username, password_digest) = if helo.auth.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            (
                username.as_bytes().to_vec(),
                password_digest(&helo.auth, username.as_bytes(), password.as_bytes()).into_bytes(),
            )
        };
        Ping {
            digest: shared_key_digest(&salt, hostname.as_bytes(), &helo.nonce, key).into_bytes(),
            hostname: hostname.as_bytes().to_vec(),
            salt,
            username,
            password_digest,
        }
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let _ = rmp::encode::write_array_len(&mut b, 6);
        let _ = rmp::encode::write_str(&mut b, "PING");
        for v in [
            &self.hostname,
            &self.salt,
            &self.digest,
            &self.username,
            &self.password_digest,
        ] {
            let _ = rmp::encode::write_str_len(&mut b, v.len() as u32);
            b.extend_from_slice(v);
        }
        b
    }

    /// Decodes.
    pub fn decode(frame: &[u8]) -> Result<Ping, HandshakeError> {
        let items = parse(frame, "PING", 6)?;
        Ok(Ping {
            hostname: field(&items, 1, "PING hostname")?,
            salt: field(&items, 2, "PING salt")?,
            digest: field(&items, 3, "PING digest")?,
            username: field(&items, 4, "PING username")?,
            password_digest: field(&items, 5, "PING password digest")?,
        })
    }

    /// The server's check: `Err(reason)` to send back in a failed PONG.
    pub fn verify(
        &self,
        helo: &Helo,
        key: &[u8],
        users: &[(String, String)],
    ) -> Result<(), String> {
        let expected = shared_key_digest(&self.salt, &self.hostname, &helo.nonce, key);
        if !digests_equal(expected.as_bytes(), &self.digest) {
            return Err("shared_key mismatch".into());
        }
        if !users.is_empty() {
            let ok = users.iter().any(|(u, p)| {
                u.as_bytes() == self.username.as_slice()
                    && digests_equal(
                        password_digest(&helo.auth, u.as_bytes(), p.as_bytes()).as_bytes(),
                        &self.password_digest,
                    )
            });
            if !ok {
                return Err("username/password mismatch".into());
            }
        }
        Ok(())
    }
}

impl Pong {
    /// The server's answer to a verified (or rejected) PING.
    pub fn new(
        ping: &Ping,
        helo: &Helo,
        result: Result<(), String>,
        hostname: &str,
        key: &[u8],
    ) -> Pong {
        match result {
            Ok(()) => Pong {
                ok: true,
                reason: String::new(),
                hostname: hostname.as_bytes().to_vec(),
                digest: shared_key_digest(&ping.salt, hostname.as_bytes(), &helo.nonce, key)
                    .into_bytes(),
            },
            Err(reason) => Pong {
                ok: false,
                reason,
                hostname: Vec::new(),
                digest: Vec::new(),
            },
        }
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let _ = rmp::encode::write_array_len(&mut b, 5);
        let _ = rmp::encode::write_str(&mut b, "PONG");
        let _ = rmp::encode::write_bool(&mut b, self.ok);
        let _ = rmp::encode::write_str(&mut b, &self.reason);
        for v in [&self.hostname, &self.digest] {
            let _ = rmp::encode::write_str_len(&mut b, v.len() as u32);
            b.extend_from_slice(v);
        }
        b
    }

    /// Decodes.
    pub fn decode(frame: &[u8]) -> Result<Pong, HandshakeError> {
        let items = parse(frame, "PONG", 5)?;
        let ok = items[1]
            .as_bool()
            .ok_or_else(|| HandshakeError("PONG result must be a boolean".into()))?;
        Ok(Pong {
            ok,
            reason: String::from_utf8_lossy(&field(&items, 2, "PONG reason")?).into_owned(),
            hostname: field(&items, 3, "PONG hostname")?,
            digest: field(&items, 4, "PONG digest")?,
        })
    }

    /// The client's check of the server's proof.
    pub fn verify(&self, ping: &Ping, helo: &Helo, key: &[u8]) -> Result<(), HandshakeError> {
        if !self.ok {
            return Err(HandshakeError(format!(
                "the server rejected authentication: {} (check shared_key, username and password)",
                self.reason
            )));
        }
        let expected = shared_key_digest(&ping.salt, &self.hostname, &helo.nonce, key);
        if !digests_equal(expected.as_bytes(), &self.digest) {
            return Err(HandshakeError(
                "the server's PONG digest does not match our shared_key: the server knows a \
                 different key (check shared_key on both sides)"
                    .into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_research_vectors() {
        let salt = b"0123456789abcdef0123456789abcdef";
        let nonce: Vec<u8> = (0..16).collect();
        assert_eq!(
            shared_key_digest(salt, b"client.example", &nonce, b"secret"),
            "3a680037d3979b4f789647cd22e7e55f2197791eb498799823c424e2213124ed63938d1c422f50e08ec02957ef44df338e46c77e8ea164b0dde6d64e171b30df"
        );
        assert_eq!(
            shared_key_digest(salt, b"server.example", &nonce, b"secret"),
            "3389a63bef56054281d75fb7b05965b0d1b1ea9eba25b4594ed8e06a02e725af1fbf401cdbe697423c388ac1948566570a6f592284a536370ca36a5ccf88cbbd"
        );
        let auth: Vec<u8> = (16..32).collect();
        assert_eq!(
            password_digest(&auth, b"user", b"pass"),
            "30ba189083890f86a0f1c763335d41db45565f83c1ccc40cb117adc1677e2597a24b01d07b410f4f969fcbdbae7dffa606a9a8e02d34f126658def33403a6248"
        );
    }

    #[test]
    fn a_full_exchange_with_raw_bytes_in_str() {
        // Fluent Bit sends raw random bytes inside str: not UTF-8.
        let mut helo_frame = Vec::new();
        rmp::encode::write_array_len(&mut helo_frame, 2).unwrap();
        rmp::encode::write_str(&mut helo_frame, "HELO").unwrap();
        rmp::encode::write_map_len(&mut helo_frame, 2).unwrap();
        rmp::encode::write_str(&mut helo_frame, "nonce").unwrap();
        rmp::encode::write_str_len(&mut helo_frame, 16).unwrap();
        helo_frame.extend_from_slice(&[0xff; 16]);
        rmp::encode::write_str(&mut helo_frame, "auth").unwrap();
        rmp::encode::write_str_len(&mut helo_frame, 16).unwrap();
        helo_frame.extend_from_slice(&[0xfe; 16]);
        let helo = Helo::decode(&helo_frame).unwrap();
        assert_eq!(helo.nonce, [0xff; 16]);
        assert!(helo.keepalive);
        let users = vec![("user".to_string(), "pass".to_string())];
        let ping = Ping::new(&helo, "client", b"k", "user", "pass");
        let ping = Ping::decode(&ping.encode()).unwrap();
        assert_eq!(ping.verify(&helo, b"k", &users), Ok(()));
        assert_eq!(
            ping.verify(&helo, b"other", &users),
            Err("shared_key mismatch".into())
        );
        let wrong_user = Ping::new(&helo, "client", b"k", "user", "nope");
        assert_eq!(
            wrong_user.verify(&helo, b"k", &users),
            Err("username/password mismatch".into())
        );
        let pong = Pong::new(&ping, &helo, Ok(()), "server", b"k");
        let pong = Pong::decode(&pong.encode()).unwrap();
        assert_eq!(pong.verify(&ping, &helo, b"k"), Ok(()));
        assert!(pong.verify(&ping, &helo, b"other").is_err());
        let refused = Pong::new(&ping, &helo, Err("shared_key mismatch".into()), "s", b"k");
        let err = Pong::decode(&refused.encode())
            .unwrap()
            .verify(&ping, &helo, b"k")
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("rejected authentication: shared_key mismatch"));
        let no_keepalive = Helo {
            nonce: vec![1],
            auth: vec![],
            keepalive: false,
        };
        assert!(!Helo::decode(&no_keepalive.encode()).unwrap().keepalive);
        assert!(Ping::decode(&[0x92, 0xa4, b'P', b'I', b'N', b'G', 0xc0]).is_err());
    }
}
