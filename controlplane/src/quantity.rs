//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1e3`) as the
//! scheduler compares them: whole units or thousandths, rounded up as
//! apimachinery's `Value()` and `MilliValue()` round.

/// A quantity in thousandths of its unit (`cpu: 250m` is 250), rounded up;
/// None when it does not parse or does not fit.
pub fn milli(q: &str) -> Option<i64> {
    scaled(q, 3)
}

/// A quantity in whole units (`memory: 1Ki` is 1024), rounded up.
pub fn value(q: &str) -> Option<i64> {
    scaled(q, 0)
}

/// `q` times 10^`extra`, rounded up (away from zero for positives).
fn scaled(q: &str, extra: i32) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let (negative, digits) = match number.as_bytes().first() {
        Some(b'-') => (true, &number[1..]),
        Some(b'+') => (false, &number[1..]),
        _ => (false, number),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || whole.len() + frac.len() > 30
    {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in whole.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    let (pow2, mut pow10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        s => {
            let exp = s.strip_prefix(['e', 'E'])?;
            (0, exp.parse::<i32>().ok().filter(|e| e.abs() <= 40)?)
        }
    };
    pow10 += extra - i32::try_from(frac.len()).ok()?;
    let mut v = mantissa.checked_mul(1i128.checked_shl(pow2)?)?;
    if pow10 >= 0 {
        v = v.checked_mul(10i128.checked_pow(pow10.unsigned_abs())?)?;
    } else {
        let div = 10i128.checked_pow(pow10.unsigned_abs())?;
        v = (v + div - 1) / div;
    }
    let v = i64::try_from(v).ok()?;
    Some(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(milli("500m"), Some(500));
        assert_eq!(milli("1"), Some(1000));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("2.0005"), Some(2001), "rounded up");
        assert_eq!(milli("100u"), Some(1));
        assert_eq!(value("128Mi"), Some(128 << 20));
        assert_eq!(value("1G"), Some(1_000_000_000));
        assert_eq!(value("1.5Gi"), Some(3 << 29));
        assert_eq!(value("1e3"), Some(1000));
        assert_eq!(value("8E"), Some(8_000_000_000_000_000_000));
        assert_eq!(value("110"), Some(110));
        assert_eq!(value("1500m"), Some(2));
        assert_eq!(value("-1"), Some(-1));
        for bad in [
            "",
            "Mi",
            "1Xi",
            "1.2.3",
            "abc",
            "1e999",
            "99999999999999999999Ei",
        ] {
            assert_eq!(value(bad), None, "{bad:?}");
        }
    }
}
