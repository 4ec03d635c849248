//! Python for the tests, in a virtual environment (target/venv): on Debian 12 the
//! system python is "externally managed" and `pip install` into it is refused, so
//! nothing is installed outside the venv. It holds flask, gunicorn and pytest (the
//! integration tests' servers, the pytest example) and the pytest plugin
//! (python/pytest-portwatch), installed as a user would: `pip install ./DIR`.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::{output, root, run};

pub const PLUGIN_DIR: &str = "python/pytest-portwatch";

pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    pub fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// A command running the venv's python.
    pub fn python(&self) -> Command {
        Command::new(self.bin().join("python3"))
    }

    /// PATH with the venv's bin first: `python3` there is the venv's.
    pub fn path_env(&self) -> OsString {
        let mut dirs = vec![self.bin()];
        dirs.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        std::env::join_paths(dirs).unwrap_or_default()
    }
}

/// The interpreter the venv is made from: Debian's /usr/bin/python3 when it can make
/// one (the python3-venv package), else the python3 on PATH.
fn base_python() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    let can = |p: &Path| output(Command::new(p).args(["-c", "import venv, ensurepip"])).is_some();
    if can(system) {
        system.to_path_buf()
    } else {
        PathBuf::from("python3")
    }
}

/// Makes (once) and fills target/venv; reinstalls the plugin every time, so its
/// tests run the working tree's code.
pub fn venv() -> Result<Venv> {
    let v = Venv { dir: root().join("target/venv") };
    if !v.bin().join("python3").exists() {
        let base = base_python();
        run(Command::new(&base).arg("-m").arg("venv").arg(&v.dir))
            .with_context(|| format!("{} -m venv failed (Debian: apt-get install python3-venv)", base.display()))?;
    }
    let have = v.python().args(["-c", "import flask, gunicorn, pytest"]).stderr(Stdio::null()).status()?;
    if !have.success() {
        run(v.python().args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "flask", "gunicorn", "pytest"]))?;
    }
    run(v.python().current_dir(root()).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("./{PLUGIN_DIR}"),
    ]))?;
    Ok(v)
}

/// The plugin's own tests, against the built binary.
pub fn plugin_tests(v: &Venv, portwatch: &Path) -> Result<()> {
    run(v
        .python()
        .current_dir(root().join(PLUGIN_DIR))
        .args(["-m", "pytest", "-q", "tests"])
        .env("PORTWATCH", portwatch)
        .env("PATH", v.path_env()))
}
