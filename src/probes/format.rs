//! Parsers for the text formats of /proc/net. They are hand-written because `procfs` covers
//! only part of them: its `Snmp` and `Snmp6` need every field of one kernel version to be
//! present (and fail on kernels that add or drop one), and it has no parser for `netstat`
//! (TcpExt), `sockstat`, `softnet_stat` or the per-CPU tables under `/proc/net/stat/`. All are
//! pure functions from bytes, never panic, and report what is malformed.

use anyhow::{Context, Result, bail};

/// Values of `names` in a file of `Name value` lines (`/proc/net/snmp6`). A name the kernel
/// does not have is `None`.
pub fn name_value_lines(text: &[u8], names: &[&str]) -> Result<Vec<Option<u64>>> {
    let text = std::str::from_utf8(text).context("not UTF-8")?;
    let mut out = vec![None; names.len()];
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        let (Some(name), value) = (words.next(), words.next()) else {
            continue;
        };
        if let Some(i) = names.iter().position(|w| *w == name) {
            let value = value.with_context(|| format!("line {}: {name} without a value", n + 1))?;
            out[i] = Some(
                value
                    .parse()
                    .with_context(|| format!("line {}: {name} {value:?}", n + 1))?,
            );
        }
    }
    Ok(out)
}

/// Values of `names` in the `prefix` section of an snmp-style file (`/proc/net/snmp`,
/// `/proc/net/netstat`): a header line `Prefix: Name1 Name2` followed by a value line
/// `Prefix: 1 2`. A name the kernel does not have is `None`.
pub fn snmp_section(text: &[u8], prefix: &str, names: &[&str]) -> Result<Vec<Option<u64>>> {
    let text = std::str::from_utf8(text).context("not UTF-8")?;
    let mut lines = text.lines();
    while let Some(header) = lines.next() {
        let Some(keys) = header
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix(':'))
        else {
            continue;
        };
        let Some(values) = lines
            .next()
            .and_then(|l| l.strip_prefix(prefix))
            .and_then(|r| r.strip_prefix(':'))
        else {
            bail!("section {prefix}: header without a value line");
        };
        let keys: Vec<&str> = keys.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if keys.len() != values.len() {
            bail!(
                "section {prefix}: {} names but {} values",
                keys.len(),
                values.len()
            );
        }
        return names
            .iter()
            .map(|name| match keys.iter().position(|k| k == name) {
                None => Ok(None),
                Some(i) => values[i]
                    .parse::<u64>()
                    .map(Some)
                    .with_context(|| format!("{prefix}: {name}: bad value {:?}", values[i])),
            })
            .collect();
    }
    bail!("no {prefix} section")
}

/// Values of `names` on the `prefix` line of a sockstat-style file
/// (`TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1`).
pub fn keyed_line(text: &[u8], prefix: &str, names: &[&str]) -> Result<Vec<Option<u64>>> {
    let text = std::str::from_utf8(text).context("not UTF-8")?;
    let Some(rest) = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')))
    else {
        bail!("no {prefix} line");
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    names
        .iter()
        .map(|name| match words.chunks(2).find(|kv| kv[0] == *name) {
            None => Ok(None),
            Some([_, v]) => v
                .parse::<u64>()
                .map(Some)
                .with_context(|| format!("{prefix}: {name}: bad value {v:?}")),
            Some(_) => bail!("{prefix}: {name} has no value"),
        })
        .collect()
}

/// Column sums of a per-CPU statistics table under `/proc/net/stat/` (`nf_conntrack`,
/// `arp_cache`): a header line of names, then one line of hexadecimal values per CPU.
pub fn percpu_table(text: &[u8], names: &[&str]) -> Result<Vec<Option<u64>>> {
    let text = std::str::from_utf8(text).context("not UTF-8")?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty file")?
        .split_whitespace()
        .collect();
    let mut sums = vec![0u64; header.len()];
    let mut rows = 0;
    for (n, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        if cols.len() != header.len() {
            bail!(
                "row {}: {} columns, header has {}",
                n + 1,
                cols.len(),
                header.len()
            );
        }
        for (sum, col) in sums.iter_mut().zip(&cols) {
            let v = u64::from_str_radix(col, 16)
                .with_context(|| format!("row {}: bad hex value {col:?}", n + 1))?;
            *sum = sum.wrapping_add(v);
        }
        rows += 1;
    }
    if rows == 0 {
        bail!("no per-CPU rows");
    }
    Ok(names
        .iter()
        .map(|name| header.iter().position(|h| h == name).map(|i| sums[i]))
        .collect())
}

/// Sums of the first `columns` hexadecimal columns of `/proc/net/softnet_stat` over its rows
/// (one per CPU).
pub fn softnet_columns(text: &[u8], columns: usize) -> Result<Vec<u64>> {
    let text = std::str::from_utf8(text).context("not UTF-8")?;
    let mut sums = vec![0u64; columns];
    let mut rows = 0;
    for (n, line) in text.lines().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        if cols.len() < columns {
            bail!("row {}: {} columns, need {columns}", n + 1, cols.len());
        }
        for (sum, col) in sums.iter_mut().zip(&cols) {
            let v = u64::from_str_radix(col, 16)
                .with_context(|| format!("row {}: bad hex value {col:?}", n + 1))?;
            *sum = sum.wrapping_add(v);
        }
        rows += 1;
    }
    if rows == 0 {
        bail!("no rows");
    }
    Ok(sums)
}

/// A single unsigned number (a sysctl such as `nf_conntrack_max`).
pub fn single_number(text: &[u8]) -> Result<u64> {
    let s = std::str::from_utf8(text).context("not UTF-8")?.trim();
    s.parse::<u64>()
        .with_context(|| format!("bad number {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &[u8] =
        b"Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoMin MaxConn CurrEstab\nTcp: 200 -1 7\n";

    #[test]
    fn snmp_finds_names_and_misses() {
        let v = snmp_section(SNMP, "Tcp", &["CurrEstab", "Nope"]).unwrap();
        assert_eq!(v, vec![Some(7), None]);
        assert!(snmp_section(SNMP, "Udp", &["X"]).is_err());
        // A negative value is only an error when it is asked for.
        assert!(snmp_section(SNMP, "Tcp", &["MaxConn"]).is_err());
    }

    #[test]
    fn snmp_rejects_malformed() {
        assert!(snmp_section(b"Tcp: A B\nTcp: 1\n", "Tcp", &["A"]).is_err());
        assert!(snmp_section(b"Tcp: A B\n", "Tcp", &["A"]).is_err());
        assert!(snmp_section(b"\xff\xfe", "Tcp", &["A"]).is_err());
        assert!(snmp_section(b"", "Tcp", &["A"]).is_err());
    }

    #[test]
    fn keyed_line_parses_pairs() {
        let t = b"sockets: used 5\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1\nUDP: inuse 2 mem 0\n";
        assert_eq!(
            keyed_line(t, "TCP", &["tw", "mem", "x"]).unwrap(),
            vec![Some(2), Some(1), None]
        );
        assert!(keyed_line(b"TCP: inuse", "TCP", &["inuse"]).is_err());
        assert!(keyed_line(b"TCP: inuse x", "TCP", &["inuse"]).is_err());
    }

    #[test]
    fn name_value_lines_find_names_and_misses() {
        let t = b"Ip6InReceives                   \t5\nUdp6InDatagrams \t7\nUdp6NoPorts 0\n";
        assert_eq!(
            name_value_lines(t, &["Udp6NoPorts", "Udp6InDatagrams", "Udp6Nope"]).unwrap(),
            vec![Some(0), Some(7), None]
        );
        assert!(name_value_lines(b"Udp6NoPorts\n", &["Udp6NoPorts"]).is_err());
        assert!(name_value_lines(b"Udp6NoPorts x\n", &["Udp6NoPorts"]).is_err());
        assert!(name_value_lines(b"\xff", &["A"]).is_err());
        // A name not asked for may be anything.
        assert_eq!(name_value_lines(b"Other x\n", &["A"]).unwrap(), vec![None]);
    }

    #[test]
    fn percpu_sums_hex() {
        let t = b"entries found\n00000001 0000000a\n00000001 00000010\n";
        assert_eq!(
            percpu_table(t, &["found", "gone"]).unwrap(),
            vec![Some(26), None]
        );
        assert!(percpu_table(b"a b\n1\n", &["a"]).is_err());
        assert!(percpu_table(b"a b\n", &["a"]).is_err());
        assert!(percpu_table(b"a\nzz\n", &["a"]).is_err());
    }

    #[test]
    fn softnet_sums() {
        let t = b"00000010 00000001 00000000\n00000020 00000002 00000000\n";
        assert_eq!(softnet_columns(t, 2).unwrap(), vec![48, 3]);
        assert!(softnet_columns(b"00000010\n", 2).is_err());
    }
}
