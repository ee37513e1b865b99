//! TLS material both ends of the protocol load: the crypto provider, PEM
//! certificates, private keys and trust anchors, with errors that name the
//! file at fault.

use std::{path::Path, sync::Arc};

use rustls::{RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A certificate, key or TLS set-up problem, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or is not PEM.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A certificate file holds no certificate.
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    /// A CA certificate was rejected.
    #[error("invalid CA certificate in {path}: {reason}")]
    BadCa {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls or quinn refused the configuration (a key that does not match
    /// the certificate, for example).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider roxyd uses everywhere.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_error(path: &Path, e: &rustls_pki_types::pem::Error) -> TlsError {
    let reason = match e {
        // The OS error alone reads best: "No such file or directory".
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        e => e.to_string(),
    };
    TlsError::Read {
        path: path.display().to_string(),
        reason,
    }
}

/// Loads every certificate in a PEM file, in file order.
///
/// # Errors
///
/// When the file cannot be read, is not PEM, or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(path, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
///
/// # Errors
///
/// When the file cannot be read or holds no key.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Read {
            path: path.display().to_string(),
            reason: "no private key found".to_owned(),
        },
        e => read_error(path, &e),
    })
}

/// Loads CA certificates from PEM files into a trust store.
///
/// # Errors
///
/// When a file cannot be read, holds no certificate, or holds one that is
/// not a usable trust anchor.
pub fn load_roots<P: AsRef<Path>>(paths: &[P]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        let path = path.as_ref();
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::BadCa {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}
