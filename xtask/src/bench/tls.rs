//! The bench's test PKI: a throwaway CA and a `*.bench.test` server
//! certificate (rcgen), and the rustls configs of the TLS server and clients.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// Server and client TLS configurations sharing one generated CA.
pub struct Pki {
    /// The local TLS server's configuration.
    pub server: Arc<rustls::ServerConfig>,
    /// The load generator's configuration (trusts only the test CA).
    pub client: Arc<rustls::ClientConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    /// Generates the CA and a leaf valid for `bench.test` and `*.bench.test`
    /// (and `*.ok.bench.test`, the DNS-style wildcard zone).
    pub fn generate() -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "egressd bench CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf_params = rcgen::CertificateParams::new(vec![
            "bench.test".to_owned(),
            "*.bench.test".to_owned(),
            "*.ok.bench.test".to_owned(),
        ])?;
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .context("TLS server certificate")?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca_cert.der().to_vec()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The bytes of a real ClientHello for `name` (what SNI routers peek at).
    pub fn client_hello(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let server_name = ServerName::try_from(name.to_owned())?;
        let mut conn = rustls::ClientConnection::new(self.client.clone(), server_name)?;
        let mut out = Vec::new();
        conn.write_tls(&mut out)?;
        Ok(out)
    }
}
