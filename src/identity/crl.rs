//! Certificate revocation lists (RFC 5280 §5) in Istio's plug-in CA layout: `ca-crl.pem` holds
//! one or more PEM `X509 CRL` blocks, each signed by a CA of the mesh.
//!
//! This module is the model: [`CrlSet::parse`] turns the file into the set of revoked
//! (issuer, serial) pairs, and [`CrlSet::check`] tells whether a presented chain contains one.
//! The CA side (adding a serial and re-signing) is [`sign`]; keeping the set current on a node
//! and enforcing it in handshakes and on live connections is `super::revocation`.
//!
//! Trust: a CRL only counts if its signature is verified. A CRL issued by one of our trust
//! anchors is verified when it is loaded, and a file holding one with a bad signature is
//! rejected whole. A CRL issued by a CA we only know from peers' chains (a plug-in CA whose
//! `ca-cert.pem` is an intermediate) cannot be verified at load; it is kept and its signature
//! is verified against the issuing certificate of a presented chain — a chain the handshake has
//! already verified up to our roots — before any of its entries revokes anything. An
//! unverifiable CRL therefore never revokes, and a forged one cannot either.
//!
//! Matching is by issuer name and serial, at every position of the chain (leaf and
//! intermediates), the way RFC 5280 identifies a certificate.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::verify::spiffe_identities;

pub mod sign;

/// The PEM label of a CRL block.
pub const PEM_LABEL: &str = "X509 CRL";

/// A certificate serial number, normalised (big-endian, no leading zero bytes) so that a serial
/// typed by a user, read from a certificate or from a CRL compares equal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// From the big-endian bytes of the integer (DER content; a sign byte is dropped).
    pub fn from_bytes(bytes: &[u8]) -> Serial {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        Serial(bytes[start..].to_vec())
    }

    /// The normalised big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Lower-case hex without separators (`openssl x509 -serial` prints the same digits).
impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("00");
        }
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Accepts hex as printed by `openssl x509 -serial` (`serial=` prefix optional), by
/// `openssl x509 -text` (colon separated) or with a `0x` prefix; case does not matter.
impl FromStr for Serial {
    type Err = CrlError;

    fn from_str(s: &str) -> Result<Serial, CrlError> {
        let bad = |reason: &str| CrlError::BadSerial {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let t = s.trim();
        let t = t.strip_prefix("serial=").unwrap_or(t);
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let digits: String = t.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() {
            return Err(bad("empty"));
        }
        if digits.len() > 42 {
            return Err(bad("longer than 20 bytes (RFC 5280 limit)"));
        }
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("not hexadecimal"));
        }
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        let bytes = (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|_| bad("not hexadecimal")))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(Serial::from_bytes(&bytes))
    }
}

/// What can go wrong with a CRL, or what a CRL says about a chain.
#[derive(thiserror::Error)]
pub enum CrlError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not PEM, or a CRL block is not a CRL.
    #[error("{}: {reason}; expected PEM blocks 'X509 CRL' (RFC 5280)", block(*index))]
    Malformed {
        /// 1-based position of the block in the file (0: the file as a whole).
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A CRL issued by one of our trust anchors whose signature does not verify.
    #[error("CRL #{index} (issuer {issuer}): signature does not verify against that CA: {reason}")]
    BadSignature {
        /// 1-based position.
        index: usize,
        /// Issuer name.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// A CRL past its nextUpdate: a newer one should exist, so this one may miss revocations.
    #[error("CRL #{index} (issuer {issuer}) expired at {next_update}; publish a fresh one")]
    Expired {
        /// 1-based position.
        index: usize,
        /// Issuer name.
        issuer: String,
        /// Its nextUpdate.
        next_update: String,
    },
    /// A serial number given by a user is not hex.
    #[error("invalid serial number {input:?}: {reason}; expected hex, e.g. 3a:5f:09 or 3A5F09")]
    BadSerial {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate of the presented chain is revoked.
    #[error("certificate {subject} (serial {serial}, issuer {issuer}) is revoked by the CA's CRL")]
    Revoked {
        /// The certificate's SPIFFE identity, or its subject name.
        subject: String,
        /// Its serial.
        serial: Serial,
        /// Its issuer.
        issuer: String,
    },
    /// A CRL file is configured but no valid version of it was ever read: every peer is
    /// refused until one is (see docs/revocation.md).
    #[error("no valid CRL loaded from {path} yet ({reason}); refusing peers until one is")]
    NoValidCrl {
        /// The configured file.
        path: String,
        /// Why the last attempt failed.
        reason: String,
    },
    /// A presented certificate could not be parsed for the revocation check.
    #[error("certificate #{index} of the peer's chain cannot be parsed: {reason}")]
    BadCertificate {
        /// 0-based position in the chain.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// "CRL #n", or "CRL file" for the file as a whole (index 0).
fn block(index: usize) -> String {
    match index {
        0 => "CRL file".into(),
        n => format!("CRL #{n}"),
    }
}

/// Debug prints the Display text: rustls embeds verifier errors with `{:?}` in its messages.
impl fmt::Debug for CrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One parsed CRL.
#[derive(Debug)]
struct Crl {
    /// DER of the issuer Name, compared with certificates' issuer field.
    issuer: Vec<u8>,
    /// The issuer name for messages.
    issuer_text: String,
    revoked: HashSet<Serial>,
    /// Whether the signature was verified against a trust anchor at load.
    verified: bool,
    /// The CRL itself, kept for a deferred signature check.
    der: Vec<u8>,
}

/// The revoked certificates of a `ca-crl.pem`.
#[derive(Debug, Default)]
pub struct CrlSet {
    crls: Vec<Crl>,
}

impl CrlSet {
    /// A set that revokes nothing.
    pub fn empty() -> CrlSet {
        CrlSet::default()
    }

    /// Parses PEM `data` (any number of `X509 CRL` blocks; other blocks are ignored; an empty
    /// file revokes nothing). Each CRL whose issuer is one of `anchors` must carry a valid
    /// signature of that anchor; none may be past its nextUpdate at `now`.
    pub fn parse(
        data: &[u8],
        anchors: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<CrlSet, CrlError> {
        let anchors = anchors
            .iter()
            .filter_map(|a| X509Certificate::from_der(a).ok().map(|(_, c)| c))
            .collect::<Vec<_>>();
        let mut crls = Vec::new();
        for (i, der) in pem_blocks(data)?.into_iter().enumerate() {
            let index = i + 1;
            let crl = parse_one(&der, index)?;
            let issuer_text = crl.issuer().to_string();
            if let Some(next) = crl.next_update() {
                if next.timestamp() < unix_secs(now) {
                    return Err(CrlError::Expired {
                        index,
                        issuer: issuer_text,
                        next_update: next.to_string(),
                    });
                }
            }
            let issuer = crl.issuer().as_raw().to_vec();
            let signers: Vec<_> = anchors
                .iter()
                .filter(|a| a.subject().as_raw() == issuer)
                .collect();
            let verified = if signers.is_empty() {
                tracing::debug!(issuer = %issuer_text,
                    "CRL issuer is not a trust anchor; its signature is checked against the \
                     presented chains");
                false
            } else {
                let results: Vec<_> = signers
                    .iter()
                    .map(|a| crl.verify_signature(a.public_key()))
                    .collect();
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    if !results.iter().any(Result::is_ok) {
                        return Err(CrlError::BadSignature {
                            index,
                            issuer: issuer_text,
                            reason: e.to_string(),
                        });
                    }
                }
                true
            };
            let revoked = crl
                .iter_revoked_certificates()
                .map(|r| Serial::from_bytes(r.raw_serial()))
                .collect();
            crls.push(Crl {
                issuer,
                issuer_text,
                revoked,
                verified,
                der,
            });
        }
        Ok(CrlSet { crls })
    }

    /// Number of revoked serials over all CRLs.
    pub fn revoked_count(&self) -> usize {
        self.crls.iter().map(|c| c.revoked.len()).sum()
    }

    /// Number of CRLs in the set.
    pub fn len(&self) -> usize {
        self.crls.len()
    }

    /// Whether the set holds no CRL.
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// `Err(Revoked)` if any certificate of `chain` (leaf first, then intermediates as
    /// presented) is listed by an authenticated CRL of its issuer.
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), CrlError> {
        if self.crls.iter().all(|c| c.revoked.is_empty()) {
            return Ok(());
        }
        // Per handshake: only the issuer and serial of each certificate are read, by walking
        // the DER headers (a full X.509 parse costs far more and is needed only on a hit).
        let keys = chain
            .iter()
            .enumerate()
            .map(|(index, c)| {
                issuer_and_serial(c).ok_or_else(|| CrlError::BadCertificate {
                    index,
                    reason: "not a DER X.509 certificate".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (issuer, serial)) in keys.into_iter().enumerate() {
            let serial = Serial::from_bytes(serial);
            for crl in &self.crls {
                if crl.issuer != issuer || !crl.revoked.contains(&serial) {
                    continue;
                }
                if !crl.verified && !signed_by_next(crl, &chain[i + 1..]) {
                    continue;
                }
                return Err(CrlError::Revoked {
                    subject: describe(&chain[i]),
                    serial,
                    issuer: crl.issuer_text.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A certificate's SPIFFE identity, or else its subject name, for messages.
fn describe(cert: &CertificateDer<'_>) -> String {
    if let Some(id) = spiffe_identities(cert)
        .ok()
        .and_then(|ids| ids.into_iter().next())
    {
        return id.to_string();
    }
    X509Certificate::from_der(cert)
        .map(|(_, x)| x.subject().to_string())
        .unwrap_or_else(|_| "(unparsable certificate)".into())
}

/// Whether `crl` is signed by the certificate of `rest` (the chain above the revoked one) that
/// bears its issuer's name. The chain was verified by the handshake, so that certificate is a
/// CA of ours.
fn signed_by_next(crl: &Crl, rest: &[CertificateDer<'_>]) -> bool {
    let signer = rest.iter().find_map(|c| {
        X509Certificate::from_der(c)
            .ok()
            .map(|(_, x)| x)
            .filter(|x| x.subject().as_raw() == crl.issuer)
    });
    let Some(signer) = signer else {
        return false;
    };
    match CertificateRevocationList::from_der(&crl.der) {
        Ok((_, parsed)) => parsed.verify_signature(signer.public_key()).is_ok(),
        Err(_) => false,
    }
}

/// The issuer Name (whole DER element, as [`X509Certificate::issuer`]'s `as_raw`) and the
/// serial's content bytes of a DER certificate:
/// `Certificate ::= SEQUENCE { TBSCertificate ::= SEQUENCE { [0] version OPTIONAL,
/// serialNumber INTEGER, signature AlgorithmIdentifier, issuer Name, … }, … }`.
fn issuer_and_serial(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (cert, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(cert.content, 0x30)?;
    let mut rest = tbs.content;
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest, 0xa0)?.1;
    }
    let (serial, rest) = der_element(rest, 0x02)?;
    let (_, rest) = der_element(rest, 0x30)?;
    let (issuer, _) = der_element(rest, 0x30)?;
    Some((issuer.whole, serial.content))
}

/// One DER element: its whole encoding and its content.
struct Element<'a> {
    whole: &'a [u8],
    content: &'a [u8],
}

/// The element at the start of `input` if its tag is `tag` (definite lengths only, as DER
/// requires), and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(Element<'_>, &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = input.get(2..2 + n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((
        Element {
            whole,
            content: &whole[header..],
        },
        &input[end..],
    ))
}

/// The DER of each `X509 CRL` block of a PEM file.
fn pem_blocks(data: &[u8]) -> Result<Vec<Vec<u8>>, CrlError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let blocks = pem::parse_many(data).map_err(|e| CrlError::Malformed {
        index: 0,
        reason: format!("not valid PEM: {e}"),
    })?;
    let crls: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == PEM_LABEL)
        .map(|b| b.into_contents())
        .collect();
    if crls.is_empty() {
        return Err(CrlError::Malformed {
            index: 0,
            reason: "no PEM 'X509 CRL' block in a non-empty file".into(),
        });
    }
    Ok(crls)
}

fn parse_one(der: &[u8], index: usize) -> Result<CertificateRevocationList<'_>, CrlError> {
    match CertificateRevocationList::from_der(der) {
        Ok((&[], crl)) => Ok(crl),
        Ok(_) => Err(CrlError::Malformed {
            index,
            reason: "trailing bytes after the CRL".into(),
        }),
        Err(e) => Err(CrlError::Malformed {
            index,
            reason: format!("not a DER CertificateList: {e}"),
        }),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests;
