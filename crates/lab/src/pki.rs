//! Throwaway certificates for tests, the demo and lab use: a CA, a Manager
//! certificate for a server name, and an agent certificate, all made fresh
//! with rcgen. Never use them in production.

use std::{
    io,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use roxyd_proto::tls::TlsError;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate and its private key.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8) in PEM.
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl PemPair {
    /// The chain as DER: the leaf alone.
    #[must_use]
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The key as DER.
    #[must_use]
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A certificate authority that issues Manager and agent certificates.
pub struct ThrowawayCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ThrowawayCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrowawayCa").finish_non_exhaustive()
    }
}

/// An error from rcgen.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation: {0}")]
pub struct PkiError(#[from] rcgen::Error);

impl ThrowawayCa {
    /// A new self-signed CA named `name`.
    ///
    /// # Errors
    ///
    /// When rcgen fails.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate in PEM.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate as DER.
    #[must_use]
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A server certificate for the Manager, valid for `server_name`.
    ///
    /// # Errors
    ///
    /// When rcgen fails.
    pub fn manager_cert(&self, server_name: &str) -> Result<PemPair, PkiError> {
        self.leaf(server_name, ExtendedKeyUsagePurpose::ServerAuth, |_| {})
    }

    /// A client certificate for an agent named `name`.
    ///
    /// # Errors
    ///
    /// When rcgen fails.
    pub fn agent_cert(&self, name: &str) -> Result<PemPair, PkiError> {
        self.leaf(name, ExtendedKeyUsagePurpose::ClientAuth, |_| {})
    }

    /// A Manager certificate that expired a day ago.
    ///
    /// # Errors
    ///
    /// When rcgen fails.
    pub fn expired_manager_cert(&self, server_name: &str) -> Result<PemPair, PkiError> {
        self.leaf(server_name, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn leaf(
        &self,
        name: &str,
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<PemPair, PkiError> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

/// A CA with one Manager and one agent certificate.
#[derive(Debug)]
pub struct ThrowawayPki {
    /// The CA that signed both.
    pub ca: ThrowawayCa,
    /// The Manager's certificate, for [`Self::server_name`].
    pub manager: PemPair,
    /// The agent's certificate.
    pub agent: PemPair,
    /// The Manager's TLS server name.
    pub server_name: String,
}

/// Paths of a [`ThrowawayPki`] written to a directory.
#[derive(Clone, Debug)]
pub struct PkiFiles {
    /// The CA certificate.
    pub ca_cert: PathBuf,
    /// The Manager's certificate.
    pub manager_cert: PathBuf,
    /// The Manager's key.
    pub manager_key: PathBuf,
    /// The agent's certificate.
    pub agent_cert: PathBuf,
    /// The agent's key.
    pub agent_key: PathBuf,
}

impl ThrowawayPki {
    /// A fresh CA, a Manager certificate for `server_name` and an agent
    /// certificate.
    ///
    /// # Errors
    ///
    /// When rcgen fails.
    pub fn generate(server_name: &str) -> Result<Self, PkiError> {
        // A name of its own, so that two labs' CAs are told apart by name.
        let ca = ThrowawayCa::new(&format!("roxyd throwaway CA {:08x}", rand::random::<u32>()))?;
        let manager = ca.manager_cert(server_name)?;
        let agent = ca.agent_cert("roxyd-agent")?;
        Ok(Self {
            ca,
            manager,
            agent,
            server_name: server_name.to_owned(),
        })
    }

    /// A trust store holding the CA.
    ///
    /// # Errors
    ///
    /// When the CA certificate is refused.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.cert_der())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(roots)
    }

    /// Writes every file as PEM into `dir`: certificates readable by all,
    /// private keys (on Unix) readable and writable by their owner only,
    /// mode 0600, even when the file existed before with a wider mode.
    ///
    /// # Errors
    ///
    /// When a file cannot be written.
    pub fn write_to(&self, dir: &Path) -> io::Result<PkiFiles> {
        let files = PkiFiles {
            ca_cert: dir.join("ca.pem"),
            manager_cert: dir.join("manager.pem"),
            manager_key: dir.join("manager.key"),
            agent_cert: dir.join("agent.pem"),
            agent_key: dir.join("agent.key"),
        };
        std::fs::write(&files.ca_cert, self.ca.cert_pem())?;
        std::fs::write(&files.manager_cert, &self.manager.cert_pem)?;
        write_private(&files.manager_key, &self.manager.key_pem)?;
        std::fs::write(&files.agent_cert, &self.agent.cert_pem)?;
        write_private(&files.agent_key, &self.agent.key_pem)?;
        Ok(files)
    }
}

/// Writes `contents` to `path` so that no one but the owner could ever read
/// it: the file is created 0600, and an existing file is narrowed to 0600
/// before anything is written into it.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        write_all(file, contents)
    }
    #[cfg(not(unix))]
    write_all(options.open(path)?, contents)
}

fn write_all(mut file: std::fs::File, contents: &str) -> io::Result<()> {
    use std::io::Write as _;
    file.write_all(contents.as_bytes())
}
