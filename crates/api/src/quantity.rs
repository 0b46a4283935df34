//! Kubernetes resource quantities (`10Gi`, `250m`, `1.5`), parsed only as far as validation and
//! derived settings need: to a number of base units.

/// A quantity, in base units (bytes for memory and storage, cores for CPU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantity(pub f64);

const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1024.0 * 1024.0),
    ("Gi", 1024.0 * 1024.0 * 1024.0),
    ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("n", 1e-9),
    ("u", 1e-6),
    ("m", 1e-3),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
    ("P", 1e15),
    ("E", 1e18),
];

impl Quantity {
    /// Parses the Kubernetes quantity syntax: a non-negative decimal number followed by an
    /// optional binary (`Ki`…`Ei`) or decimal (`n`, `u`, `m`, `k`…`E`) suffix.
    pub fn parse(text: &str) -> Option<Quantity> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(split);
        if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let factor = if suffix.is_empty() {
            1.0
        } else {
            SUFFIXES.iter().find(|(s, _)| *s == suffix)?.1
        };
        Some(Quantity(value * factor))
    }

    pub fn bytes(self) -> u64 {
        self.0.max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guide_quantities() {
        assert_eq!(Quantity::parse("10Gi").unwrap().bytes(), 10 << 30);
        assert_eq!(Quantity::parse("512Mi").unwrap().bytes(), 512 << 20);
        assert_eq!(Quantity::parse("250m").unwrap().0, 0.25);
        assert_eq!(Quantity::parse("1").unwrap().0, 1.0);
        assert_eq!(Quantity::parse("1.5G").unwrap().0, 1.5e9);
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in ["", "10Q", "Gi", "-1Gi", "1..5", ".5", "10 Gi x", "ten"] {
            assert!(Quantity::parse(bad).is_none(), "{bad} parsed");
        }
    }
}
