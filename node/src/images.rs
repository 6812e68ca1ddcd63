//! The image catalogue: what a container runs when it names no `command`,
//! and which images bring files of their own.
//!
//! ferry-node never pulls an image. A container with `command` runs that
//! command (its `args` appended). Otherwise the image name picks a built-in
//! behaviour, matched on the repository's last path component with the tag
//! and digest dropped (`registry.k8s.io/e2e-test-images/agnhost:2.53` is
//! `agnhost`, `nginx:latest` is `nginx`); entries from `--images` are
//! matched first, on the whole reference, then without the tag, then on
//! the short name. An `--images` entry is a command line, or an image
//! root: a directory on the node whose files the container sees over the
//! node's ([`crate::image_layer`]), with an optional command line. See the
//! crate's README for the table and the file's format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Container;
use serde::Deserialize;

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
    #[error(
        "image {image:?} has an image root ({root}) but no command: set `command` in the \
         container, or `command` in the image's --images entry"
    )]
    NoCommand { image: String, root: String },
    #[error("image {image:?}: {source}")]
    Layer {
        image: String,
        source: crate::image_layer::ImageLayerError,
    },
}

/// One `--images` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A command line, run on the node's own files (a program without a
    /// `/` is looked up next to ferry-node first).
    Command(Vec<String>),
    /// An image root: a directory (absolute, checked when the file is
    /// read) whose files the container sees over the node's, and the
    /// command line for containers without `command` (empty: none; it is
    /// resolved inside the container, where the image's files are).
    Root { root: PathBuf, command: Vec<String> },
}

impl From<Vec<String>> for Entry {
    fn from(argv: Vec<String>) -> Self {
        Entry::Command(argv)
    }
}

/// Why an `--images` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImagesFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than 1 MiB")]
    TooLarge { path: PathBuf },
    #[error(
        "{path}: expected a map of image to a command line (a list of strings) or to \
         {{root: /absolute/dir, command: [optional list of strings]}}: {detail}"
    )]
    Syntax { path: PathBuf, detail: String },
    #[error("{path}: image {image:?}: {what}")]
    Entry {
        path: PathBuf,
        image: String,
        what: String,
    },
}

/// An entry as the file has it: the two forms, and anything else kept to
/// say what is wrong with it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileEntry {
    Command(Vec<String>),
    Root(FileRoot),
    Invalid(serde_json::Value),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoot {
    root: PathBuf,
    #[serde(default)]
    command: Vec<String>,
}

/// What an entry of the file's should have been.
const ENTRY_FORMS: &str = "expected a command line (a list of strings, e.g. [\"sh\", \"-c\", \
     \"echo hi\"]) or a map {root: /absolute/dir, command: [optional list of strings]}";

impl FileEntry {
    /// The entry, checked (`root` an absolute existing directory that
    /// overlayfs options can name); the error says what to fix.
    fn check(self) -> Result<Entry, String> {
        match self {
            FileEntry::Command(argv) => Ok(Entry::Command(argv)),
            FileEntry::Root(FileRoot { root, command }) => {
                crate::image_layer::check_root(&root).map_err(|e| e.to_string())?;
                Ok(Entry::Root { root, command })
            }
            FileEntry::Invalid(value) => {
                let detail = match value {
                    serde_json::Value::Object(_) => serde_json::from_value::<FileRoot>(value)
                        .err()
                        .map(|e| e.to_string()),
                    serde_json::Value::Array(_) => serde_json::from_value::<Vec<String>>(value)
                        .err()
                        .map(|e| e.to_string()),
                    other => Some(format!("got {other}")),
                };
                Err(match detail {
                    Some(d)
                        if ["integer", "floating point", "boolean"]
                            .iter()
                            .any(|t| d.contains(&format!("invalid type: {t}"))) =>
                    {
                        format!(
                            "{ENTRY_FORMS}: {d} (in a file with image roots, quote arguments \
                             YAML reads as numbers or booleans, e.g. \"5\")"
                        )
                    }
                    Some(d) => format!("{ENTRY_FORMS}: {d}"),
                    None => ENTRY_FORMS.to_owned(),
                })
            }
        }
    }
}

/// The catalogue: built-in behaviours plus the `--images` entries.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Image reference (whole, without tag, or short name) to its entry.
    extra: BTreeMap<String, Entry>,
    /// Where ferry-node's own binary lives (ferry-netexec is looked up
    /// there first).
    exe_dir: Option<PathBuf>,
}

/// Names the built-in behaviours answer to.
pub const BUILTIN: &[&str] = &[
    "nginx", "httpd", "agnhost", "pause", "busybox", "alpine", "debian", "ubuntu",
];

impl Catalogue {
    pub fn new(extra: BTreeMap<String, Entry>, exe_dir: Option<PathBuf>) -> Self {
        Catalogue { extra, exe_dir }
    }

    /// Reads an `--images` file: a YAML (or JSON) map of image to a
    /// command line (a list of strings) or to `{root: /abs/dir, command:
    /// [...]}` (`command` optional).
    pub fn load_extra(path: &Path) -> Result<BTreeMap<String, Entry>, ImagesFileError> {
        let io = |source| ImagesFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > 1 << 20 {
            return Err(ImagesFileError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        // A file of command lines only reads as it always has, each
        // argument as written (`[chmod, 0755, f]`); with image roots the
        // entries go through serde's untagged buffering, which reads plain
        // numbers and booleans as such (they must be quoted there).
        if let Ok(lists) = serde_saphyr::from_str::<BTreeMap<String, Vec<String>>>(&text) {
            return Ok(lists
                .into_iter()
                .map(|(image, argv)| (image, Entry::Command(argv)))
                .collect());
        }
        let raw: BTreeMap<String, FileEntry> =
            serde_saphyr::from_str(&text).map_err(|e| ImagesFileError::Syntax {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        raw.into_iter()
            .map(|(image, entry)| match entry.check() {
                Ok(entry) => Ok((image, entry)),
                Err(what) => Err(ImagesFileError::Entry {
                    path: path.to_path_buf(),
                    image,
                    what,
                }),
            })
            .collect()
    }

    /// Reads `--images` files in order; an image in a later file replaces
    /// the earlier one's entry.
    pub fn load_files(paths: &[PathBuf]) -> Result<BTreeMap<String, Entry>, ImagesFileError> {
        let mut all = BTreeMap::new();
        for path in paths {
            all.extend(Self::load_extra(path)?);
        }
        Ok(all)
    }

    /// The `--images` entry of `image`: on the whole reference, then
    /// without the tag, then on the short name.
    fn entry(&self, image: &str) -> Option<&Entry> {
        let (untagged, short) = names(image);
        [image, untagged.as_str(), short.as_str()]
            .into_iter()
            .find_map(|key| self.extra.get(key))
    }

    /// The image root whose files `container` sees over the node's, when
    /// its image's `--images` entry has one (whether or not the container
    /// sets `command`).
    pub fn root(&self, container: &Container) -> Option<&Path> {
        let image = container.image.as_deref().map(str::trim)?;
        match self.entry(image)? {
            Entry::Root { root, .. } => Some(root),
            Entry::Command(_) => None,
        }
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
        let (_, short) = names(image);
        match self.entry(image) {
            Some(Entry::Command(entry)) => {
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
            // Resolved in the container, where the image's files are.
            Some(Entry::Root { root, command }) if command.is_empty() => {
                return Err(ImageError::NoCommand {
                    image: image.into(),
                    root: root.display().to_string(),
                });
            }
            Some(Entry::Root { command, .. }) => {
                let mut argv = command.clone();
                argv.extend(args);
                return Ok(argv);
            }
            None => {}
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
        if self.root(container).is_some() {
            format!("ferry://root/{untagged}")
        } else if container.command.as_ref().is_some_and(|c| !c.is_empty()) {
            format!("ferry://command/{untagged}")
        } else if self.entry(image).is_some() {
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
            Entry::Command(vec!["redis-server".into()]),
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

    /// Writes `text` as an `--images` file of the test's own.
    fn images_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferry-node-images-file-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("images.yaml");
        std::fs::write(&path, text).expect("file");
        path
    }

    #[test]
    fn images_file_both_forms() {
        let root =
            std::env::temp_dir().join(format!("ferry-node-images-root-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("root");
        let path = images_file(
            "forms",
            &format!(
                "registry.example/hello:1: [\"sh\", \"-c\", \"echo hello\"]\n\
                 plain:\n  - sleep\n  - \"5\"\n\
                 localhost/ferry:0.1.0:\n  root: {root}\n  command: [/usr/bin/ferry-agent, --flag]\n\
                 localhost/bare: {{root: {root}}}\n",
                root = root.display()
            ),
        );
        let extra = Catalogue::load_extra(&path).expect("loads");
        assert_eq!(
            extra.get("registry.example/hello:1"),
            Some(&Entry::Command(vec![
                "sh".into(),
                "-c".into(),
                "echo hello".into()
            ]))
        );
        assert_eq!(
            extra.get("plain"),
            Some(&Entry::Command(vec!["sleep".into(), "5".into()]))
        );
        assert_eq!(
            extra.get("localhost/ferry:0.1.0"),
            Some(&Entry::Root {
                root: root.clone(),
                command: vec!["/usr/bin/ferry-agent".into(), "--flag".into()]
            })
        );
        assert_eq!(
            extra.get("localhost/bare"),
            Some(&Entry::Root {
                root: root.clone(),
                command: vec![]
            })
        );
        // JSON is YAML too.
        let json = images_file(
            "json",
            &format!(
                r#"{{"a": ["x"], "b": {{"root": "{}", "command": ["y"]}}}}"#,
                root.display()
            ),
        );
        let extra = Catalogue::load_extra(&json).expect("json loads");
        assert_eq!(extra.len(), 2);
        assert!(matches!(extra.get("b"), Some(Entry::Root { command, .. }) if command == &["y"]));
    }

    #[test]
    fn images_file_errors_name_the_image_and_the_fix() {
        let err = |name: &str, text: &str| -> String {
            let path = images_file(name, text);
            Catalogue::load_extra(&path)
                .expect_err("refused")
                .to_string()
        };
        let msg = err("relative", "app:\n  root: images/app\n");
        assert!(
            msg.contains("\"app\"") && msg.contains("must be an absolute path"),
            "{msg}"
        );
        let msg = err("missing", "app: {root: /nonexistent/ferry-image-root}\n");
        assert!(
            msg.contains("\"app\"")
                && msg.contains("/nonexistent/ferry-image-root")
                && msg.contains("unpack the image's files there"),
            "{msg}"
        );
        let msg = err("typo", "app: {root: /tmp, comand: [x]}\n");
        assert!(!msg.contains("quote"), "{msg}");
        assert!(
            msg.contains("\"app\"")
                && msg.contains("unknown field `comand`")
                && msg.contains("{root: /absolute/dir"),
            "{msg}"
        );
        let msg = err("scalar", "app: just-a-string\n");
        assert!(
            msg.contains("\"app\"") && msg.contains("expected a command line"),
            "{msg}"
        );
        let msg = err("nested", "app: [[a]]\n");
        assert!(
            msg.contains("\"app\"") && msg.contains("expected a command line"),
            "{msg}"
        );
        let msg = err("not-a-map", "- a\n- b\n");
        assert!(msg.contains("expected a map of image"), "{msg}");
    }

    #[test]
    fn command_lists_read_as_written() {
        let path = images_file(
            "old",
            "a: [chmod, 0755, f]\nb:\n  - x\n  - 1.50\n  - true\n",
        );
        let extra = Catalogue::load_extra(&path).expect("loads");
        assert_eq!(
            extra.get("a"),
            Some(&Entry::Command(vec![
                "chmod".into(),
                "0755".into(),
                "f".into()
            ]))
        );
        assert_eq!(
            extra.get("b"),
            Some(&Entry::Command(vec![
                "x".into(),
                "1.50".into(),
                "true".into()
            ]))
        );
        // Next to an image root, a number must be quoted; the error says so.
        let path = images_file("mixed", "a: [sleep, 5]\nb: {root: /tmp}\n");
        let msg = Catalogue::load_extra(&path)
            .expect_err("refused")
            .to_string();
        assert!(msg.contains("\"a\"") && msg.contains("quote"), "{msg}");
    }

    #[test]
    fn later_files_win() {
        let root = std::env::temp_dir();
        let first = images_file("first", "a: [one]\nb: [two]\n");
        let second = images_file("second", &format!("b: {{root: {}}}\n", root.display()));
        let all = Catalogue::load_files(&[first, second]).expect("loads");
        assert_eq!(all.get("a"), Some(&Entry::Command(vec!["one".into()])));
        assert!(matches!(all.get("b"), Some(Entry::Root { .. })));
        assert!(Catalogue::load_files(&[]).expect("none").is_empty());
    }

    #[test]
    fn image_roots() {
        let (mut cat, dir) = catalogue();
        // ferry-netexec is next to ferry-node, but an image root's command
        // is resolved in the container, where the image's files are.
        std::fs::write(dir.join("agent"), b"").expect("fake agent");
        cat.extra.insert(
            "localhost/ferry".into(),
            Entry::Root {
                root: dir.clone(),
                command: vec!["agent".into()],
            },
        );
        cat.extra.insert(
            "bare".into(),
            Entry::Root {
                root: dir.clone(),
                command: vec![],
            },
        );
        // On the whole reference, without the tag, on the short name.
        let c = container("localhost/ferry:0.1.0", None, &["--x"]);
        assert_eq!(cat.root(&c), Some(dir.as_path()));
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("entry's"),
            ["agent", "--x"]
        );
        assert_eq!(cat.image_id(&c), "ferry://root/localhost/ferry");
        // The container's own command wins; the files still come.
        let c = container(
            "localhost/ferry:0.1.0",
            Some(&["/usr/bin/ferry-agent"]),
            &["--y"],
        );
        assert_eq!(cat.root(&c), Some(dir.as_path()));
        assert_eq!(
            cat.argv(&c, str::to_owned).expect("own"),
            ["/usr/bin/ferry-agent", "--y"]
        );
        assert_eq!(cat.image_id(&c), "ferry://root/localhost/ferry");
        let c = container("example.org/bare:2", None, &[]);
        assert_eq!(cat.root(&c), Some(dir.as_path()));
        let err = cat.argv(&c, str::to_owned).expect_err("no command");
        assert!(matches!(err, ImageError::NoCommand { .. }));
        assert!(err.to_string().contains("set `command`"), "{err}");
        let c = container("example.org/bare:2", Some(&["/bin/app"]), &[]);
        assert_eq!(cat.argv(&c, str::to_owned).expect("own"), ["/bin/app"]);
        // Command entries and built-ins bring no files.
        assert_eq!(
            cat.root(&container("example.com/tools/redis:7", None, &[])),
            None
        );
        assert_eq!(cat.root(&container("nginx", None, &[])), None);
        let c = container("nginx", Some(&["sh"]), &[]);
        assert_eq!(cat.root(&c), None);
        assert_eq!(cat.image_id(&c), "ferry://command/nginx");
    }
}
