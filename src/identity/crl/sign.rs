//! The CA side of revocation: `ambit ca revoke` adds serials to `<ca dir>/ca-crl.pem` and
//! re-signs it with the CA key, so it runs where `ca-key.pem` lives (beside `ambit ca serve`).
//!
//! The CA's own CRL keeps every entry it had (with its original revocation time and reason),
//! gains the new serials, gets the next CRL number and a fresh thisUpdate/nextUpdate. CRLs of
//! other issuers in the file (say, of a previous intermediate) are kept verbatim after it. The
//! file is replaced atomically (temporary file + rename), so a node polling it never reads half
//! of it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::{pem_blocks, Serial, PEM_LABEL};
use crate::identity::ca::{to_offset, CA_CRL, CLOCK_SKEW};
use crate::identity::{Ca, IdentityError};

/// What [`revoke`] wrote.
#[derive(Debug)]
pub struct Signed {
    /// The new CRL number.
    pub number: BigUint,
    /// Serials the CA's CRL now lists.
    pub revoked: usize,
    /// The given serials that were not listed before.
    pub added: Vec<Serial>,
    /// The new CRL's nextUpdate.
    pub next_update: SystemTime,
}

/// Adds `serials` (none: just re-sign, e.g. before nextUpdate) to the CRL of the CA in `dir`
/// and writes it to `dir/ca-crl.pem`, valid for `validity` from `now`.
pub fn revoke(
    dir: &Path,
    serials: &[Serial],
    reason: Option<RevocationReason>,
    validity: Duration,
    now: SystemTime,
) -> Result<Signed, IdentityError> {
    let ca = Ca::load(dir)?;
    let path = dir.join(CA_CRL);
    let err = |problem: String| IdentityError::CaFile {
        path: path.clone(),
        problem,
    };
    let ca_der = &ca.chain()[0];
    let (_, ca_cert) = X509Certificate::from_der(ca_der)
        .map_err(|e| err(format!("CA certificate unparsable: {e}")))?;
    let existing = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };

    let mut entries: Vec<RevokedCertParams> = Vec::new();
    let mut number = BigUint::default();
    let mut foreign = Vec::new();
    for (i, der) in pem_blocks(&existing)
        .map_err(|e| err(e.to_string()))?
        .into_iter()
        .enumerate()
    {
        let (_, crl) = CertificateRevocationList::from_der(&der)
            .map_err(|e| err(format!("CRL #{} unparsable: {e}", i + 1)))?;
        if crl.issuer().as_raw() != ca_cert.subject().as_raw() {
            foreign.push(der.clone());
            continue;
        }
        crl.verify_signature(ca_cert.public_key()).map_err(|e| {
            err(format!(
                "CRL #{} names this CA as issuer but its signature does not verify ({e}); \
                 refusing to extend it",
                i + 1
            ))
        })?;
        if let Some(n) = crl.crl_number() {
            number = number.max(n.clone());
        }
        for r in crl.iter_revoked_certificates() {
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(
                    Serial::from_bytes(r.raw_serial()).as_bytes(),
                ),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: r
                    .reason_code()
                    .and_then(|(_, code)| reason_from_code(code.0)),
                invalidity_date: None,
            });
        }
    }

    let listed: Vec<Serial> = entries
        .iter()
        .map(|e| Serial::from_bytes(e.serial_number.as_ref()))
        .collect();
    let mut added = Vec::new();
    let revoked_at = to_offset(now).map_err(err)?;
    for s in serials {
        if listed.contains(s) || added.contains(s) {
            continue;
        }
        entries.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(s.as_bytes()),
            revocation_time: revoked_at,
            reason_code: reason,
            invalidity_date: None,
        });
        added.push(s.clone());
    }

    number += 1u32;
    let next_update = now + validity;
    let params = CertificateRevocationListParams {
        // Back-dated like leaves, so that a node whose clock is a little behind accepts it.
        this_update: to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now)).map_err(err)?,
        next_update: to_offset(next_update).map_err(err)?,
        crl_number: SerialNumber::from(number.to_bytes_be()),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(ca.signer())
        .map_err(|e| err(format!("cannot sign the CRL with the CA key: {e}")))?;
    let mut out = crl.pem().map_err(|e| err(e.to_string()))?;
    for der in foreign {
        out.push_str(&pem::encode(&pem::Pem::new(PEM_LABEL, der)));
    }
    write_atomic(&path, out.as_bytes()).map_err(err)?;
    Ok(Signed {
        number,
        revoked: params.revoked_certs.len(),
        added,
        next_update,
    })
}

/// The RFC 5280 reason for a CRL entry's reason code (unknown codes are dropped).
fn reason_from_code(code: u8) -> Option<RevocationReason> {
    use RevocationReason::*;
    Some(match code {
        0 => Unspecified,
        1 => KeyCompromise,
        2 => CaCompromise,
        3 => AffiliationChanged,
        4 => Superseded,
        5 => CessationOfOperation,
        6 => CertificateHold,
        8 => RemoveFromCrl,
        9 => PrivilegeWithdrawn,
        10 => AaCompromise,
        _ => return None,
    })
}

/// Writes `bytes` to a temporary file beside `path` (world-readable: the CRL is public and
/// sidecars read it as the proxy user), syncs it and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("pem.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", tmp.display()))
}
