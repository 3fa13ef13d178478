//! wss: the rustls server configuration built from PEM files, the certificate each handshake
//! gets (by SNI), and its reload on SIGHUP. The per-connection state is `conn::link::TlsLink`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// What `--tls-*` configures.
#[derive(Clone, Debug)]
pub(crate) struct TlsSettings {
    /// (certificate chain, private key) PEM files, in order: the first pair is the default for
    /// clients that send no SNI or a name no certificate has.
    pub(crate) pairs: Vec<(PathBuf, PathBuf)>,
    pub(crate) tls12: bool,
}

/// The pairs loaded, chosen by SNI.
#[derive(Debug)]
struct Certs {
    keys: Vec<(Vec<CertificateDer<'static>>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let first = self.keys.first().map(|(_, k)| k.clone());
        let Some(name) = hello.server_name().and_then(|n| ServerName::try_from(n).ok()) else {
            return first;
        };
        for (chain, key) in &self.keys {
            let Some(leaf) = chain.first() else { continue };
            let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { continue };
            if cert.verify_is_valid_for_subject_name(&name).is_ok() {
                return Some(key.clone());
            }
        }
        first
    }
}

/// The server configuration in use; reloading swaps it whole, so a handshake under way keeps
/// the one it started with.
#[derive(Debug)]
pub(crate) struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// Each pair's certificate file and when its leaf certificate expires (Unix seconds), as
    /// last loaded: `ringcast_tls_certificate_expiry_timestamp_seconds`.
    expiry: RwLock<Arc<Vec<(String, i64)>>>,
}

/// When a leaf certificate stops being valid (its `notAfter`, Unix seconds).
fn not_after(leaf: &CertificateDer<'_>) -> Result<i64, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

fn load_pair(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<(Vec<CertificateDer<'static>>, Arc<CertifiedKey>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no CERTIFICATE in the file", cert.display()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let signer = provider::sign::any_supported_type(&der)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain.clone(), signer);
    ck.keys_match().map_err(|e| {
        format!("--tls-key {} does not belong to --tls-cert {}: {e}", key.display(), cert.display())
    })?;
    Ok((chain, Arc::new(ck)))
}

type Built = (ServerConfig, Vec<(String, i64)>);

fn build(s: &TlsSettings) -> Result<Built, String> {
    if s.pairs.is_empty() {
        return Err("--tls-listen needs at least one --tls-cert and --tls-key pair".into());
    }
    let mut keys = Vec::with_capacity(s.pairs.len());
    let mut expiry = Vec::with_capacity(s.pairs.len());
    for (c, k) in &s.pairs {
        let pair = load_pair(c, k)?;
        let leaf = pair.0.first().ok_or_else(|| format!("--tls-cert {}: empty", c.display()))?;
        let when = not_after(leaf).map_err(|e| format!("--tls-cert {}: {e}", c.display()))?;
        expiry.push((c.display().to_string(), when));
        keys.push(pair);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if s.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Certs { keys }));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = provider::Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
    // Everything is written through ringcast's own buffers; rustls keeps none of its own.
    cfg.max_early_data_size = 0;
    Ok((cfg, expiry))
}

impl Tls {
    /// Loads every pair; a file that does not load is a start-up error naming it.
    pub(crate) fn new(settings: TlsSettings) -> Result<Tls, String> {
        let (cfg, expiry) = build(&settings)?;
        Ok(Tls {
            settings,
            current: RwLock::new(Arc::new(cfg)),
            expiry: RwLock::new(Arc::new(expiry)),
        })
    }

    /// Each certificate file and when its leaf expires (Unix seconds).
    pub(crate) fn expiry(&self) -> Arc<Vec<(String, i64)>> {
        self.expiry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configuration new handshakes use.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the pairs again: new handshakes use them; a pair that does not load is refused
    /// with the reason and the old configuration stays.
    pub(crate) fn reload(&self) -> Result<String, String> {
        let (cfg, expiry) = build(&self.settings)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
        *self.expiry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(expiry);
        Ok(format!("{} certificate pair(s)", self.settings.pairs.len()))
    }
}
