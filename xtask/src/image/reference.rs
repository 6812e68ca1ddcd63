//! Image names: `[domain[:port]/]path:tag`, checked against the grammar of
//! distribution's `reference` package (simplified to what a tagged name
//! needs) and normalised the way containerd's CRI looks images up.

use anyhow::{Result, bail, ensure};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The name as given (`docker load` normalises `RepoTags` itself).
    pub given: String,
    /// The fully qualified name: `ctr images import` (and so `kind load
    /// image-archive`) stores the `io.containerd.image.name` annotation as is,
    /// while the kubelet asks for the normalised name, so `ferry:1` must be
    /// stored as `docker.io/library/ferry:1` for a pod to find it.
    pub full: String,
    /// The tag alone, for `org.opencontainers.image.ref.name`.
    pub tag: String,
}

impl Reference {
    pub fn parse(name: &str) -> Result<Self> {
        ensure!(
            !name.contains('@'),
            "image name {name:?}: a digest cannot be chosen, it is computed"
        );
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let Some(colon) = name[slash..].rfind(':').map(|i| slash + i) else {
            bail!("image name {name:?} has no tag (e.g. localhost/ferry:0.1.0)");
        };
        let (path, tag) = (&name[..colon], &name[colon + 1..]);
        ensure!(
            valid_tag(tag),
            "image name {name:?}: tag {tag:?} is not [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        );
        let mut components: Vec<&str> = path.split('/').collect();
        let domain = match components.as_slice() {
            [first, _, ..] if first.contains(['.', ':']) || *first == "localhost" => {
                let domain = components.remove(0);
                ensure!(
                    valid_domain(domain),
                    "image name {name:?}: bad registry {domain:?}"
                );
                domain.to_owned()
            }
            _ => "docker.io".to_owned(),
        };
        for c in &components {
            ensure!(
                valid_component(c),
                "image name {name:?}: path component {c:?} is not lowercase letters and digits \
                 joined by '.', '_', '__' or '-'"
            );
        }
        if domain == "docker.io" && components.len() == 1 {
            components.insert(0, "library");
        }
        let full = format!("{domain}/{}:{tag}", components.join("/"));
        ensure!(
            full.len() <= 255,
            "image name {name:?} is longer than 255 bytes"
        );
        Ok(Self {
            given: name.to_owned(),
            full,
            tag: tag.to_owned(),
        })
    }
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    (1..=128).contains(&bytes.len())
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    port_ok && host.split('.').all(label_ok)
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_full_name_and_tag() -> Result<()> {
        for (name, full, tag) in [
            ("localhost/ferry:0.1.0", "localhost/ferry:0.1.0", "0.1.0"),
            ("ferry:0.1.0", "docker.io/library/ferry:0.1.0", "0.1.0"),
            ("me/ferry:dev", "docker.io/me/ferry:dev", "dev"),
            (
                "localhost:5000/a/b-c__d:v1_2",
                "localhost:5000/a/b-c__d:v1_2",
                "v1_2",
            ),
            (
                "ghcr.io/x/ferry:0.1.0-rc.1",
                "ghcr.io/x/ferry:0.1.0-rc.1",
                "0.1.0-rc.1",
            ),
        ] {
            let r = Reference::parse(name)?;
            assert_eq!(
                (r.given.as_str(), r.full.as_str(), r.tag.as_str()),
                (name, full, tag)
            );
        }
        Ok(())
    }

    #[test]
    fn untagged_digested_and_malformed_names_are_refused() {
        for name in [
            "localhost/ferry",
            "localhost:5000/ferry",
            "ferry@sha256:00",
            "Ferry:1",
            "ferry:",
            "ferry:-x",
            "a//b:1",
            "a/-b:1",
            "a/b..c:1",
            "bad_host.io:x/ferry:1",
        ] {
            assert!(Reference::parse(name).is_err(), "{name} accepted");
        }
    }
}
