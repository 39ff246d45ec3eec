//! Turning a CA private key in any of the usual PEM encodings into an rcgen signing key.
//!
//! rcgen built on *ring* only accepts PKCS#8, while Istio's plug-in CA directory commonly holds
//! `BEGIN RSA PRIVATE KEY` (PKCS#1) or `BEGIN EC PRIVATE KEY` (SEC1) files. Both are wrapped into
//! a PKCS#8 `PrivateKeyInfo` here: the inner key bytes are kept as they are and only the
//! algorithm identifier around them is added, so nothing about the key itself is reinterpreted.

use rcgen::KeyPair;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// DER of the `AlgorithmIdentifier` for rsaEncryption (1.2.840.113549.1.1.1) with NULL params.
const ALG_RSA: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// DER of the `AlgorithmIdentifier` for id-ecPublicKey (1.2.840.10045.2.1) on prime256v1.
const ALG_EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// DER of the `AlgorithmIdentifier` for id-ecPublicKey on secp384r1 (1.3.132.0.34).
const ALG_EC_P384: &[u8] = &[
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];

/// Converts a parsed private key into an rcgen key pair, or says why it cannot.
pub(crate) fn key_pair_from_der(key: &PrivateKeyDer<'_>) -> Result<KeyPair, String> {
    let candidates: Vec<Vec<u8>> = match key {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Pkcs1(k) => vec![wrap_pkcs8(ALG_RSA, k.secret_pkcs1_der())],
        // SEC1 does not have to name its curve, so try the curves *ring* can sign with; the
        // wrong one is rejected by *ring* because the parameters or key lengths do not match.
        PrivateKeyDer::Sec1(k) => vec![
            wrap_pkcs8(ALG_EC_P256, k.secret_sec1_der()),
            wrap_pkcs8(ALG_EC_P384, k.secret_sec1_der()),
        ],
        _ => return Err("unsupported private key encoding".into()),
    };
    let mut last = String::from("no key");
    for der in candidates {
        match KeyPair::try_from(&PrivatePkcs8KeyDer::from(der)) {
            Ok(kp) => return Ok(kp),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "not a usable RSA (2048-8192 bit) or ECDSA P-256/P-384 key: {last}"
    ))
}

/// Builds `PrivateKeyInfo ::= SEQUENCE { version 0, algorithm, OCTET STRING privateKey }`.
fn wrap_pkcs8(alg: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00]; // INTEGER 0 (version v1)
    body.extend_from_slice(alg);
    body.push(0x04); // OCTET STRING
    push_len(&mut body, inner.len());
    body.extend_from_slice(inner);
    let mut out = vec![0x30]; // SEQUENCE
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Appends a DER definite length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        let mut v = Vec::new();
        push_len(&mut v, 5);
        push_len(&mut v, 0x80);
        push_len(&mut v, 0x1234);
        assert_eq!(v, [5, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn pkcs8_key_passes_through() {
        let kp = KeyPair::generate().unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        let back = key_pair_from_der(&der).unwrap();
        assert_eq!(back.public_key_raw(), kp.public_key_raw());
    }
}
