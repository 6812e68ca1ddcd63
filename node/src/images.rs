//! The image catalogue: what a container runs when it names no `command`.
//!
//! ferry-node never pulls an image. A container with `command` runs that
//! command (its `args` appended). Otherwise the image name picks a built-in
//! behaviour, matched on the repository's last path component with the tag
//! and digest dropped (`registry.k8s.io/e2e-test-images/agnhost:2.53` is
//! `agnhost`, `nginx:latest` is `nginx`); entries from `--images` are
//! matched first, on the whole reference, then without the tag, then on
//! the short name. See the crate's README for the table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

/// The program the built-in behaviours run.
pub const NETEXEC: &str = "ferry-netexec";

/// Why a container's image cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("container has no image")]
    Missing,
    #[error(
        "image {image:?} is not in ferry-node's catalogue: ferry-node never pulls images and runs \
         only catalogued images (built in: {builtin}; more with --images), or a container that \
         sets `command`"
    )]
    Unknown { image: String, builtin: String },
    #[error(
        "image {image:?} needs {program:?}, found neither next to ferry-node ({dir}) nor on PATH"
    )]
    ProgramMissing {
        image: String,
        program: String,
        dir: String,
    },
    #[error("image {image:?}: the --images entry is an empty command line")]
    EmptyEntry { image: String },
}

/// The catalogue: built-in behaviours plus the `--images` entries.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Image reference (whole, without tag, or short name) to argv.
    extra: BTreeMap<String, Vec<String>>,
    /// Where ferry-node's own binary lives (ferry-netexec is looked up
    /// there first).
    exe_dir: Option<PathBuf>,
}

/// Names the built-in behaviours answer to.
pub const BUILTIN: &[&str] = &[
    "nginx", "httpd", "agnhost", "pause", "busybox", "alpine", "debian", "ubuntu",
];

impl Catalogue {
    pub fn new(extra: BTreeMap<String, Vec<String>>, exe_dir: Option<PathBuf>) -> Self {
        Catalogue { extra, exe_dir }
    }

    /// Reads an `--images` file: a YAML (or JSON) map of image to argv.
    pub fn load_extra(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        use anyhow::Context as _;
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        anyhow::ensure!(
            meta.len() <= 1 << 20,
            "{} is larger than 1 MiB",
            path.display()
        );
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_saphyr::from_str(&text).with_context(|| {
            format!(
                "{}: expected a map of image to command line (a list of strings)",
                path.display()
            )
        })
    }

    /// The command line `container` runs, `env` (the container's, for
    /// `$(VAR)` expansion) given. The first element is a program name or
    /// path, resolved by the caller's PATH unless made absolute here.
    pub fn argv(
        &self,
        container: &Container,
        expand: impl Fn(&str) -> String,
    ) -> Result<Vec<String>, ImageError> {
        let args: Vec<String> = container.args.iter().flatten().map(|a| expand(a)).collect();
        if let Some(command) = container.command.as_ref().filter(|c| !c.is_empty()) {
            let mut argv: Vec<String> = command.iter().map(|c| expand(c)).collect();
            argv.extend(args);
            return Ok(argv);
        }
        let image = container
            .image
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .ok_or(ImageError::Missing)?;
        let (untagged, short) = names(image);
        for key in [image, untagged.as_str(), short.as_str()] {
            if let Some(entry) = self.extra.get(key) {
                let mut argv = entry.clone();
                let Some(program) = argv.first_mut() else {
                    return Err(ImageError::EmptyEntry {
                        image: image.into(),
                    });
                };
                if !program.contains('/')
                    && let Some(found) = self.find_next_to_exe(program)
                {
                    *program = found.to_string_lossy().into_owned();
                }
                argv.extend(args);
                return Ok(argv);
            }
        }
        let netexec = |rest: Vec<String>| -> Result<Vec<String>, ImageError> {
            let program = self
                .find(NETEXEC)
                .ok_or_else(|| ImageError::ProgramMissing {
                    image: image.into(),
                    program: NETEXEC.into(),
                    dir: self
                        .exe_dir
                        .as_ref()
                        .map_or_else(|| "?".into(), |d| d.display().to_string()),
                })?;
            let mut argv = vec![program.to_string_lossy().into_owned()];
            argv.extend(rest);
            Ok(argv)
        };
        match short.as_str() {
            "nginx" | "httpd" => {
                let ports: Vec<String> = container
                    .ports
                    .iter()
                    .flatten()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .map(|p| p.container_port.to_string())
                    .collect();
                let ports = if ports.is_empty() {
                    "80".to_owned()
                } else {
                    ports.join(",")
                };
                netexec(vec![
                    "web".into(),
                    "--server".into(),
                    short.clone(),
                    "--port".into(),
                    ports,
                ])
            }
            "agnhost" if args.is_empty() => netexec(vec!["pause".into()]),
            "agnhost" => netexec(args),
            "pause" => netexec(vec!["pause".into()]),
            "busybox" | "alpine" | "debian" | "ubuntu" if args.is_empty() => {
                Ok(vec!["sleep".into(), "infinity".into()])
            }
            // These images have no entrypoint: `args` replace their default
            // command and run as given, as a container runtime runs them.
            "busybox" | "alpine" | "debian" | "ubuntu" => Ok(args),
            _ => Err(ImageError::Unknown {
                image: image.into(),
                builtin: BUILTIN.join(", "),
            }),
        }
    }

    fn find_next_to_exe(&self, program: &str) -> Option<PathBuf> {
        self.exe_dir
            .as_ref()
            .map(|d| d.join(program))
            .filter(|p| p.is_file())
    }

    /// `program` next to ferry-node's binary, else on PATH.
    fn find(&self, program: &str) -> Option<PathBuf> {
        self.find_next_to_exe(program).or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(program))
                    .find(|p| p.is_file())
            })
        })
    }

    /// What the image ID in a container status says: where the behaviour
    /// came from.
    pub fn image_id(&self, container: &Container) -> String {
        let image = container.image.as_deref().unwrap_or_default();
        let (untagged, short) = names(image);
        if container.command.as_ref().is_some_and(|c| !c.is_empty()) {
            format!("ferry://command/{untagged}")
        } else if self.extra.contains_key(image)
            || self.extra.contains_key(&untagged)
            || self.extra.contains_key(&short)
        {
            format!("ferry://images-file/{untagged}")
        } else {
            format!("ferry://builtin/{short}")
        }
    }
}

/// The reference without tag or digest, and its last path component.
pub fn names(image: &str) -> (String, String) {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let untagged = match no_digest.get(last_slash..).and_then(|t| t.rfind(':')) {
        Some(colon) => no_digest.get(..last_slash + colon).unwrap_or(no_digest),
        None => no_digest,
    };
    let short = untagged.rsplit('/').next().unwrap_or(untagged);
    (untagged.to_owned(), short.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn container(image: &str, command: Option<&[&str]>, args: &[&str]) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            command: command.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            args: Some(args.iter().map(|s| (*s).to_owned()).collect()),
            ..Container::default()
        }
    }

    fn catalogue() -> (Catalogue, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ferry-node-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(NETEXEC), b"").expect("fake netexec");
        let mut extra = BTreeMap::new();
        extra.insert(
            "example.com/tools/redis".into(),
            vec!["redis-server".into()],
        );
        (Catalogue::new(extra, Some(dir.clone())), dir)
    }

    #[test]
    fn image_names() {
        assert_eq!(names("nginx:latest"), ("nginx".into(), "nginx".into()));
        assert_eq!(
            names("registry.k8s.io/e2e-test-images/agnhost:2.53"),
            (
                "registry.k8s.io/e2e-test-images/agnhost".into(),
                "agnhost".into()
            )
        );
        assert_eq!(
            names("localhost:5000/busybox@sha256:abc"),
            ("localhost:5000/busybox".into(), "busybox".into())
        );
        assert_eq!(
            names("localhost:5000/x"),
            ("localhost:5000/x".into(), "x".into())
        );
    }

    #[test]
    fn command_wins_and_expands() {
        let (cat, _) = catalogue();
        let c = container("whatever:1", Some(&["sh", "-c"]), &["echo $(X)"]);
        let argv = cat.argv(&c, |s| s.replace("$(X)", "1")).expect("argv");
        assert_eq!(argv, ["sh", "-c", "echo 1"]);
    }

    #[test]
    fn builtins() {
        let (cat, dir) = catalogue();
        let netexec = dir.join(NETEXEC).to_string_lossy().into_owned();
        let mut c = container("nginx:1.27", None, &[]);
        c.ports = Some(vec![ContainerPort {
            container_port: 8080,
            ..ContainerPort::default()
        }]);
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("nginx"),
            [
                netexec.as_str(),
                "web",
                "--server",
                "nginx",
                "--port",
                "8080"
            ]
        );
        let c = container(
            "registry.k8s.io/e2e-test-images/agnhost:2.53",
            None,
            &["netexec", "--http-port=80"],
        );
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("agnhost"),
            [netexec.as_str(), "netexec", "--http-port=80"]
        );
        let c = container("busybox", None, &[]);
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("busybox"),
            ["sleep", "infinity"]
        );
        let c = container("busybox", None, &["sleep", "5"]);
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("busybox"),
            ["sleep", "5"]
        );
        let c = container("example.com/tools/redis:7", None, &["--port", "1"]);
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("extra"),
            ["redis-server", "--port", "1"]
        );
    }

    #[test]
    fn unknown_image_is_a_clear_error() {
        let (cat, _) = catalogue();
        let err = cat
            .argv(&container("quay.io/acme/app:v2", None, &[]), str::to_owned)
            .expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("quay.io/acme/app:v2"), "{msg}");
        assert!(msg.contains("never pulls images"), "{msg}");
        let mut c = container("", None, &[]);
        c.image = None;
        assert_eq!(cat.argv(&c, str::to_owned), Err(ImageError::Missing));
    }
}
