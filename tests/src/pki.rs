//! A throwaway certificate authority for test servers: server certificates
//! for several names (rustls configurations or PEM files), and a client
//! configuration trusting it.

use std::path::PathBuf;
use std::sync::Arc;

/// A test certificate authority that signs server certificates.
pub struct TestPki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM, written to a file for curl's `--cacert`.
    pub ca_pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// A fresh CA.
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "egressd e2e test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca_pem_path = dir.path().join("ca.pem");
        std::fs::write(&ca_pem_path, ca.pem()).expect("write the CA");
        TestPki {
            ca,
            ca_pem_path,
            _dir: dir,
        }
    }

    /// A rustls server configuration with one certificate for `names`
    /// (host names and/or IP literals).
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server certificate and key");
        Arc::new(config)
    }

    /// A server certificate for `names` (host names and/or IP literals) and
    /// its key, PEM, for servers that read files (nginx, the registry).
    pub fn server_pem(&self, names: &[&str]) -> (String, String) {
        let (cert, key) = self.issue(names);
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("server params");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("server certificate");
        (cert, key)
    }

    /// A rustls client configuration trusting this CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add the CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
