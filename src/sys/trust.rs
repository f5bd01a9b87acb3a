//! The certificate authorities TLS clients (the `https://` webhooks) check servers against: the system's CA bundle
//! (`SSL_CERT_FILE` when set, else the first of [`SYSTEM_BUNDLES`] that exists), plus the PEM
//! certificates of `notify.ca_file` for receivers behind a private CA. Without a system bundle,
//! Mozilla's roots built into the program (webpki-roots) stand in; with `notify.ca_file` as well,
//! only its certificates are trusted (and a warning says so). TLS is rustls with the ring
//! provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Where distributions keep their CA bundle (Debian and Ubuntu, Fedora and RHEL, openSUSE,
/// Alpine).
pub const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not PEM", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ureq::Error,
    },
    #[error("{} holds no certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    Empty { path: PathBuf },
}

/// The certificates in the PEM file at `path` (at least one).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Certificate<'static>>, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&bytes) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(source) => {
                return Err(TrustError::Parse {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if certs.is_empty() {
        return Err(TrustError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The system's CA bundle, when there is one.
fn system_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// The roots to check webhook receivers against, with `ca_file`'s certificates added.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCerts, TrustError> {
    let extra = ca_file.map(read_pem_certificates).transpose()?;
    let system = match system_bundle() {
        Some(bundle) => match read_pem_certificates(&bundle) {
            Ok(certs) => Some(certs),
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the system's CA bundle");
                None
            }
        },
        None => None,
    };
    Ok(match (system, extra) {
        (Some(mut system), Some(extra)) => {
            system.extend(extra);
            RootCerts::Specific(Arc::new(system))
        }
        (Some(system), None) => RootCerts::Specific(Arc::new(system)),
        (None, Some(extra)) => {
            tracing::warn!(
                "no system CA bundle found: https webhooks trust only the certificates of notify.ca_file"
            );
            RootCerts::Specific(Arc::new(extra))
        }
        (None, None) => RootCerts::WebPki,
    })
}

/// The TLS settings of webhook deliveries.
pub fn tls_config(ca_file: Option<&Path>) -> Result<TlsConfig, TrustError> {
    Ok(TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(roots(ca_file)?)
        .build())
}
