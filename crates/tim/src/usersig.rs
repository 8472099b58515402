//! TLSSigAPIv2 UserSigs: signing (the relay's admin sig) and verifying (the simulator).
//!
//! A UserSig is the JSON document
//! `{"TLS.ver":"2.0","TLS.identifier":…,"TLS.sdkappid":…,"TLS.expire":…,"TLS.time":…,"TLS.sig":…}`,
//! zlib-compressed, then base64 with `+`→`*`, `/`→`-`, `=`→`_` (URL-safe without percent
//! escapes). `TLS.sig` is base64 (standard) of HMAC-SHA256, keyed with the secret key's UTF-8
//! bytes, over `TLS.identifier:{id}\nTLS.sdkappid:{appid}\nTLS.time:{time}\nTLS.expire:{expire}\n`.
//!
//! HMAC is built here over `sha2` (RFC 2104, a few lines) rather than adding a crate: the `hmac`
//! in the lock file is for a newer `digest` than our `sha2`.
//!
//! Neither the key nor a sig ever appears in a [`SigError`].

use std::io::{Read, Write};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::error::code;

/// `TLS.ver` of the documents this module signs.
pub const TLS_VERSION: &str = "2.0";

/// The largest inflated document the verifier reads (a real one is about 200 bytes): a guard
/// against compression bombs.
const MAX_DOC_BYTES: u64 = 16 * 1024;

/// Why a UserSig was refused. [`SigError::tim_code`] is the code Tencent answers for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// Not base64 (in the `*-_` alphabet), not zlib, not a JSON object, or a field missing or of
    /// the wrong type.
    #[error("UserSig cannot be parsed: {0}")]
    Malformed(String),
    /// `TLS.identifier` is not the identifier of the request.
    #[error("UserSig was signed for identifier {signed:?}, not {expected:?}")]
    Identifier { expected: String, signed: String },
    /// `TLS.sdkappid` is not the app of the request.
    #[error("UserSig was signed for SDKAppID {signed}, not {expected}")]
    SdkAppId { expected: u64, signed: u64 },
    /// `TLS.sig` does not match the document under this key.
    #[error("UserSig signature does not verify with the app's key")]
    BadSignature,
    /// `TLS.time + TLS.expire` is in the past.
    #[error("UserSig expired at unix time {expired_at}")]
    Expired { expired_at: u64 },
}

impl SigError {
    /// The REST error code Tencent answers for this failure (70003, 70013, 70014, 70009, 70001).
    pub fn tim_code(&self) -> i64 {
        match self {
            SigError::Malformed(_) => code::SIG_PARSE,
            SigError::Identifier { .. } => code::SIG_IDENTIFIER,
            SigError::SdkAppId { .. } => code::SIG_SDKAPPID,
            SigError::BadSignature => code::SIG_INVALID,
            SigError::Expired { .. } => code::SIG_EXPIRED,
        }
    }
}

/// The fields of a UserSig that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigClaims {
    pub identifier: String,
    pub sdkappid: u64,
    /// `TLS.time`: unix seconds when it was signed.
    pub time: u64,
    /// `TLS.expire`: lifetime in seconds.
    pub expire: u64,
}

impl SigClaims {
    /// Unix seconds from which the sig is expired.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// `TLS.sig`: base64 of HMAC-SHA256 over the four fields, keyed with `key`'s UTF-8 bytes.
pub fn tls_sig(key: &str, sdkappid: u64, identifier: &str, time: u64, expire: u64) -> String {
    let content = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    STANDARD.encode(hmac_sha256(key.as_bytes(), content.as_bytes()))
}

/// base64 with Tencent's substitutions.
fn encode_url(bytes: &[u8]) -> String {
    STANDARD
        .encode(bytes)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

fn decode_url(s: &str) -> Result<Vec<u8>, SigError> {
    let std: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect();
    STANDARD
        .decode(std.as_bytes())
        .map_err(|_| SigError::Malformed("not base64".into()))
}

/// Signs a UserSig for `identifier`, valid `expire` seconds from `time` (unix seconds).
pub fn sign(key: &str, sdkappid: u64, identifier: &str, time: u64, expire: u64) -> String {
    let mut doc = Map::new();
    doc.insert("TLS.ver".into(), Value::from(TLS_VERSION));
    doc.insert("TLS.identifier".into(), Value::from(identifier));
    doc.insert("TLS.sdkappid".into(), Value::from(sdkappid));
    doc.insert("TLS.expire".into(), Value::from(expire));
    doc.insert("TLS.time".into(), Value::from(time));
    doc.insert(
        "TLS.sig".into(),
        Value::from(tls_sig(key, sdkappid, identifier, time, expire)),
    );
    let json = Value::Object(doc).to_string();
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let compressed = z
        .write_all(json.as_bytes())
        .and_then(|()| z.finish())
        .unwrap_or_default();
    encode_url(&compressed)
}

/// A numeric field, as a JSON number or a numeric string (the reference implementations differ).
fn number(doc: &Map<String, Value>, field: &'static str) -> Result<u64, SigError> {
    match doc.get(field) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| SigError::Malformed(format!("{field} missing or not an unsigned integer")))
}

fn text<'a>(doc: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, SigError> {
    doc.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| SigError::Malformed(format!("{field} missing or not a string")))
}

/// Decodes a UserSig without checking it.
///
/// # Errors
/// [`SigError::Malformed`].
pub fn decode(sig: &str) -> Result<(SigClaims, String), SigError> {
    let compressed = decode_url(sig)?;
    let mut json = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_DOC_BYTES + 1)
        .read_to_end(&mut json)
        .map_err(|_| SigError::Malformed("not zlib".into()))?;
    if json.len() as u64 > MAX_DOC_BYTES {
        return Err(SigError::Malformed("document too large".into()));
    }
    let doc: Map<String, Value> = serde_json::from_slice(&json)
        .map_err(|_| SigError::Malformed("not a JSON object".into()))?;
    let claims = SigClaims {
        identifier: text(&doc, "TLS.identifier")?.to_owned(),
        sdkappid: number(&doc, "TLS.sdkappid")?,
        time: number(&doc, "TLS.time")?,
        expire: number(&doc, "TLS.expire")?,
    };
    Ok((claims, text(&doc, "TLS.sig")?.to_owned()))
}

/// Verifies `sig` for `identifier` of app `sdkappid` under `key`, at `now` (unix seconds).
/// Checks, in this order: format, identifier, SDKAppID, HMAC, expiry (as Tencent's codes
/// 70003, 70013, 70014, 70009, 70001 suggest).
///
/// # Errors
/// The first check that fails, as a [`SigError`].
pub fn verify(
    sig: &str,
    key: &str,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<SigClaims, SigError> {
    let (claims, got) = decode(sig)?;
    if claims.identifier != identifier {
        return Err(SigError::Identifier {
            expected: identifier.to_owned(),
            signed: claims.identifier,
        });
    }
    if claims.sdkappid != sdkappid {
        return Err(SigError::SdkAppId {
            expected: sdkappid,
            signed: claims.sdkappid,
        });
    }
    let want = tls_sig(key, sdkappid, identifier, claims.time, claims.expire);
    if !constant_time_eq(want.as_bytes(), got.as_bytes()) {
        return Err(SigError::BadSignature);
    }
    if now >= claims.expires_at() {
        return Err(SigError::Expired {
            expired_at: claims.expires_at(),
        });
    }
    Ok(claims)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn the_known_answer() {
        assert_eq!(
            tls_sig(KEY, 1400000000, "xiaojun", 1700000000, 15552000),
            "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4="
        );
        let sig = sign(KEY, 1400000000, "xiaojun", 1700000000, 15552000);
        assert!(!sig.contains(['+', '/', '=']), "{sig}");
        let (claims, tls) = decode(&sig).unwrap();
        assert_eq!(tls, "LvA7d/Iw7gSsnskvVzBDPOCCDbuNCw4GHwTC0bip+B4=");
        assert_eq!(claims.identifier, "xiaojun");
        assert_eq!(claims.sdkappid, 1400000000);
        assert_eq!(claims.time, 1700000000);
        assert_eq!(claims.expire, 15552000);
    }

    #[test]
    fn a_sig_of_the_python_reference_implementation_verifies() {
        // TLSSigAPIv2 (Python: json.dumps + zlib.compress + base64) for the known-answer inputs.
        let reference = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkKjIT87NK82CSxSnZiQUFmSlAKUMTAyiAyqVWFGQWpYJkTE1NjRDiJZm5YFFzNPXFmekgG3zKHM1T9D3LzdODi-OKs8vCqpxcAvydnV2SSv2cy03cPcpDnA2SMgu0nUxslWoBHdYzUg__";
        let c = verify(reference, KEY, 1400000000, "xiaojun", 1700000000).unwrap();
        assert_eq!(c.expires_at(), 1700000000 + 15552000);
        let ours = sign(KEY, 1400000000, "xiaojun", 1700000000, 15552000);
        assert_eq!(decode(&ours).unwrap(), decode(reference).unwrap());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2_and_a_long_key() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231 case 6: a 131-byte key is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn a_signed_sig_verifies_until_it_expires() {
        let sig = sign(KEY, 1400000000, "admin", 1_000, 300);
        let c = verify(&sig, KEY, 1400000000, "admin", 1_000).unwrap();
        assert_eq!(c.expires_at(), 1_300);
        assert!(verify(&sig, KEY, 1400000000, "admin", 1_299).is_ok());
        let e = verify(&sig, KEY, 1400000000, "admin", 1_300).unwrap_err();
        assert_eq!(e, SigError::Expired { expired_at: 1_300 });
        assert_eq!(e.tim_code(), 70001);
    }

    #[test]
    fn a_wrong_key_identifier_or_app_fails() {
        let sig = sign(KEY, 1400000000, "admin", 1_000, 300);
        let e = verify(&sig, "another key", 1400000000, "admin", 1_000).unwrap_err();
        assert_eq!(e, SigError::BadSignature);
        assert_eq!(e.tim_code(), 70009);
        let e = verify(&sig, KEY, 1400000000, "someone", 1_000).unwrap_err();
        assert_eq!(e.tim_code(), 70013);
        let e = verify(&sig, KEY, 1400000001, "admin", 1_000).unwrap_err();
        assert_eq!(e.tim_code(), 70014);
        for bad in ["", "not a sig", "eJw_", "****"] {
            let e = verify(bad, KEY, 1400000000, "admin", 1_000).unwrap_err();
            assert_eq!(e.tim_code(), 70003, "{bad:?}");
        }
    }

    #[test]
    fn a_forged_document_with_string_numbers_is_read_but_refused() {
        // The reference implementations write numbers; strings are accepted when decoding.
        let json = r#"{"TLS.ver":"2.0","TLS.identifier":"admin","TLS.sdkappid":"1400000000","TLS.expire":"300","TLS.time":"1000","TLS.sig":"AAAA"}"#;
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(json.as_bytes()).unwrap();
        let sig = encode_url(&z.finish().unwrap());
        let (claims, _) = decode(&sig).unwrap();
        assert_eq!(claims.sdkappid, 1400000000);
        assert_eq!(
            verify(&sig, KEY, 1400000000, "admin", 1_000).unwrap_err(),
            SigError::BadSignature
        );
    }

    #[test]
    fn errors_never_show_the_sig_or_key() {
        let sig = sign(KEY, 1400000000, "admin", 1_000, 300);
        for e in [
            verify(&sig, "k", 1400000000, "admin", 1_000).unwrap_err(),
            verify(&sig, KEY, 1400000000, "admin", 9_999).unwrap_err(),
        ] {
            let s = format!("{e} {e:?}");
            assert!(!s.contains(&sig) && !s.contains(KEY), "{s}");
        }
    }

    proptest! {
        #[test]
        fn the_verifier_never_panics(s in ".{0,400}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = verify(&s, KEY, 1400000000, "admin", 1_000);
            let _ = verify(&encode_url(&bytes), KEY, 1400000000, "admin", 1_000);
            let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
            z.write_all(&bytes).unwrap();
            let _ = verify(&encode_url(&z.finish().unwrap()), KEY, 1400000000, "admin", 1_000);
        }
    }
}
