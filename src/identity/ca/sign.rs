//! Signing a checked CSR for an authorized identity: what the CA service does per request.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{to_offset, Ca, SignedLeaf, CLOCK_SKEW};
use crate::identity::csr::CheckedCsr;
use crate::identity::{Identity, IdentityError};

impl Ca {
    /// Signs the public key of `csr` for `id`, after checking that the request asks for
    /// exactly `id`. The certificate's contents are the CA's (see [`Ca::sign_leaf`]); only the
    /// key comes from the request.
    pub fn sign_csr(
        &self,
        csr: &CheckedCsr,
        id: &Identity,
        validity: Duration,
        now: SystemTime,
    ) -> Result<SignedLeaf, IdentityError> {
        csr.require_identity(id).map_err(|e| IdentityError::Issue {
            identity: id.to_string(),
            problem: e.to_string(),
        })?;
        self.sign_leaf(id, csr.public_key(), validity, now)
    }

    /// A TLS server certificate (fresh ECDSA P-256 key) for the CA service itself, with DNS
    /// and IP SANs, so that clients can check they reached the CA by its name. Returns the
    /// chain (leaf first) and the key.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
        now: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
        let err = |problem: String| IdentityError::Issue {
            identity: format!("CA service server certificate {dns_names:?} {ips:?}"),
            problem,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.clone());
        }
        for name in dns_names {
            let dns = Ia5String::try_from(name.clone())
                .map_err(|e| err(format!("DNS name {name:?}: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now
            .checked_add(validity)
            .unwrap_or(self.not_after)
            .min(self.not_after);
        params.not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now)).map_err(err)?;
        params.not_after = to_offset(not_after).map_err(err)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| err(e.to_string()))?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use rustls::pki_types::UnixTime;
    use rustls::server::ParsedCertificate;

    use super::*;
    use crate::identity::csr::new_request;
    use crate::identity::testutil::{id, TempDir};
    use crate::identity::{tls, WorkloadCert};

    #[test]
    fn a_signed_csr_becomes_a_verifiable_workload_cert_with_the_callers_key() {
        let d = TempDir::new("sign-csr");
        let ca = crate::identity::ca::init(d.path()).unwrap();
        let who = id("ns1", "sa1");
        let (key, pem) = new_request(&who).unwrap();
        let csr = CheckedCsr::parse(&pem).unwrap();
        let now = SystemTime::now();
        let leaf = ca
            .sign_csr(&csr, &who, Duration::from_secs(600), now)
            .unwrap();
        assert_eq!(leaf.chain.len(), 2);
        let cert = WorkloadCert::new(&who, leaf.chain.clone(), key, now).unwrap();
        assert_eq!(cert.not_after, leaf.not_after);
        assert!(cert.refresh_at() > now + Duration::from_secs(290));
        let parsed = ParsedCertificate::try_from(cert.leaf()).unwrap();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &ca.roots(),
            &cert.chain[1..],
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap()),
            tls::provider().signature_verification_algorithms.all,
        )
        .unwrap();

        // Another identity than the request's is refused, naming both.
        let other = id("ns1", "other");
        let err = ca
            .sign_csr(&csr, &other, Duration::from_secs(600), now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&other.to_string()) && err.contains(&who.to_string()),
            "{err}"
        );

        // A chain assembled with a key that is not the leaf's, or for another identity, is
        // refused.
        let (wrong_key, _) = new_request(&who).unwrap();
        assert!(WorkloadCert::new(&who, leaf.chain.clone(), wrong_key, now).is_err());
        let (key2, _) = new_request(&who).unwrap();
        let err = WorkloadCert::new(&other, leaf.chain, key2, now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("URI SANs"), "{err}");
    }
}
