//! Kubernetes resource quantities (`512Mi`, `1G`, `1.5Gi`, `2e9`) read as whole bytes: the one
//! place the operator turns a quantity into a number, for the sizes it derives (the broker's
//! `maxmemory` from its memory limit, the chat-server window bound) and for the storage bound.
//! Pure; the grammar is the API machinery's `resource.Quantity` (binary suffixes `Ki` … `Ei`,
//! decimal suffixes `m`, `k`, `M` … `E`, or a decimal exponent).

/// The value of `text` in whole units (bytes for memory and storage), rounded down; None when it
/// is not a non-negative quantity or does not fit in a `u128` (larger than any real size).
pub fn to_units(text: &str) -> Option<u128> {
    let text = text.trim();
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // The value is digits / 10^frac_len × multiplier; keep it exact as a fraction.
    let digits: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    let frac_len = u32::try_from(frac_part.len()).ok()?;
    let (mul, div_exp): (u128, u32) = match suffix {
        "" => (1, 0),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        "m" => (1, 3),
        "k" => (10u128.pow(3), 0),
        "M" => (10u128.pow(6), 0),
        "G" => (10u128.pow(9), 0),
        "T" => (10u128.pow(12), 0),
        "P" => (10u128.pow(15), 0),
        "E" => (10u128.pow(18), 0),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if e >= 0 {
                (10u128.checked_pow(u32::try_from(e).ok()?)?, 0)
            } else {
                (1, e.unsigned_abs())
            }
        }
        _ => return None,
    };
    let numerator = digits.checked_mul(mul)?;
    let denominator = 10u128.checked_pow(frac_len.checked_add(div_exp)?)?;
    Some(numerator / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_whole_units() {
        let table: &[(&str, Option<u128>)] = &[
            ("0", Some(0)),
            ("512Mi", Some(512 << 20)),
            ("256Mi", Some(268_435_456)),
            ("1Gi", Some(1 << 30)),
            ("1.5Gi", Some(1_610_612_736)),
            ("64Ti", Some(64 << 40)),
            ("900Pi", Some(900 << 50)),
            ("1Ei", Some(1 << 60)),
            ("1G", Some(1_000_000_000)),
            ("500M", Some(500_000_000)),
            ("128k", Some(128_000)),
            ("2e9", Some(2_000_000_000)),
            ("1E3", Some(1_000)),
            ("1500m", Some(1)),
            ("12345", Some(12_345)),
            (".5Ki", Some(512)),
            ("", None),
            ("Mi", None),
            ("1Xi", None),
            ("-1Gi", None),
            ("1.2.3", None),
            ("99999999999999999999999999999999999999999Ei", None),
        ];
        for (text, want) in table {
            assert_eq!(to_units(text), *want, "{text:?}");
        }
    }
}
