//! Generated credentials: one random value per key of `stator_api::names::secret_keys`.

use std::collections::BTreeMap;
use std::fmt;

use rand::distr::Alphanumeric;
use rand::{CryptoRng, RngExt};
use stator_api::names::secret_keys;

/// Length of each generated value: 32 alphanumerics, about 190 bits.
pub const GENERATED_LENGTH: usize = 32;

/// Credentials Stator generated for a database. `Debug` never shows the values.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    values: BTreeMap<&'static str, String>,
    /// The certificates of the Secret `NAME-tls` (TLS enabled, no `spec.tls.issuerRef`).
    tls: Option<super::tls::TlsMaterial>,
}

impl Credentials {
    /// Fresh random values from a cryptographically secure generator, e.g. `&mut rand::rng()`.
    /// Alphanumeric only, so they need no quoting in SQL, URIs or config files.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Credentials {
        let values = secret_keys::ALL
            .into_iter()
            .map(|key| {
                let value: String = (0..GENERATED_LENGTH)
                    .map(|_| char::from(rng.sample(Alphanumeric)))
                    .collect();
                (key, value)
            })
            .collect();
        Credentials { values, tls: None }
    }

    /// Fresh random values from the thread-local CSPRNG (ChaCha seeded by the operating system).
    pub fn random() -> Credentials {
        Credentials::generate(&mut rand::rng())
    }

    /// Adds the certificates the render puts into the Secret `NAME-tls`.
    pub fn with_tls(mut self, tls: super::tls::TlsMaterial) -> Credentials {
        self.tls = Some(tls);
        self
    }

    /// The certificates, when [`Credentials::with_tls`] added them.
    pub fn tls(&self) -> Option<&super::tls::TlsMaterial> {
        self.tls.as_ref()
    }

    /// The value of `key`, one of `secret_keys::ALL`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.values.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_key_long_and_alphanumeric() {
        let creds = Credentials::generate(&mut rand::rng());
        for key in secret_keys::ALL {
            let value = creds.get(key).unwrap();
            assert!(value.len() >= 24, "{key} is too short");
            assert!(value.chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
        }
        assert_eq!(creds.iter().count(), secret_keys::ALL.len());
    }

    #[test]
    fn generated_values_differ_between_keys_and_between_calls() {
        let a = Credentials::generate(&mut rand::rng());
        let b = Credentials::generate(&mut rand::rng());
        assert_ne!(a, b);
        let mut values: Vec<&str> = a.iter().map(|(_, v)| v).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), secret_keys::ALL.len());
    }

    #[test]
    fn debug_output_hides_the_values() {
        let creds = Credentials::generate(&mut rand::rng());
        let shown = format!("{creds:?}");
        for (_, value) in creds.iter() {
            assert!(!shown.contains(value));
        }
    }
}
