//! A single-node Slurm cluster on loopback for tests: munged, slurmctld and
//! slurmd started in the foreground with their own config, keys, state and
//! logs in a temporary folder, stopped by PID on drop, run as the current
//! user (root or not). Installs Slurm and munge from Debian packages when
//! they are missing (that needs root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct SlurmCluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

/// Install `slurm-wlm` and `munge` with apt when `slurmctld` is not on PATH.
pub fn ensure_slurm_installed() {
    let present = |p: &str| Command::new(p).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if present("slurmctld") && present("munged") {
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "installing Slurm failed: apt-get {args:?}: {}\n(the Slurm test installs slurm-wlm and munge from Debian packages and needs root)",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("installing Slurm needs apt-get (Debian) and root: {e}"),
        }
    };
    run(&["update", "-qq"]);
    run(&["install", "-y", "-qq", "slurm-wlm", "munge"]);
    assert!(present("slurmctld") && present("munged"), "slurm-wlm installed but slurmctld/munged are not on PATH");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The user the daemons run as: this process's (Slurm runs as an ordinary
/// user when its config names that user as SlurmUser and SlurmdUser).
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().expect("hostname");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl SlurmCluster {
    /// Start munged, slurmctld and slurmd under `dir` and wait until the
    /// node is idle.
    pub fn start(dir: &Path) -> SlurmCluster {
        ensure_slurm_installed();
        let dir = dir.to_path_buf();
        for sub in ["state", "spool", "log", "munge-key", "munge"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        set_mode(&dir.join("munge-key"), 0o700);
        set_mode(&dir.join("munge"), 0o755);
        let key = dir.join("munge-key/munge.key");
        let mut bytes = vec![0u8; 1024];
        let mut rng = wc_rl::seeds::SplitMix64::new(std::process::id() as u64 ^ 0x5eed);
        for b in bytes.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        std::fs::write(&key, bytes).unwrap();
        set_mode(&key, 0o400);
        let socket = dir.join("munge/munge.sock");
        let host = short_hostname();
        let user = current_user();
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=wctest\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={}\nSlurmdPort={}\n\
                 SlurmUser={user}\nSlurmdUser={user}\nAuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={}\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n\
                 MpiDefault=none\nReturnToService=2\nSchedulerType=sched/builtin\nJobCompType=jobcomp/none\n\
                 AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\nMinJobAge=3600\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=8000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port(),
                socket.display()
            ),
        )
        .unwrap();
        let mut cluster = SlurmCluster { dir: dir.clone(), conf: conf.clone(), daemons: Vec::new() };
        let log = |name: &str| std::fs::File::create(dir.join("log").join(name)).unwrap();
        let munged = Command::new("munged")
            .arg("-F")
            .arg("--force")
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={d}/munge/munged.pid"))
            .arg(format!("--log-file={d}/log/munged.log"))
            .arg(format!("--seed-file={d}/munge/seed"))
            .stdout(log("munged.out"))
            .stderr(log("munged.err"))
            .spawn()
            .expect("munged starts");
        cluster.daemons.push(("munged", munged));
        cluster.wait_for(Duration::from_secs(30), "munged socket", || socket.exists());
        for (name, args) in [("slurmctld", vec!["-D", "-c", "-f"]), ("slurmd", vec!["-D", "-f"])] {
            let child = Command::new(name)
                .args(&args)
                .arg(&conf)
                .stdout(log(&format!("{name}.out")))
                .stderr(log(&format!("{name}.err")))
                .spawn()
                .unwrap_or_else(|e| panic!("{name} starts: {e}"));
            cluster.daemons.push((name, child));
        }
        cluster.wait_for(Duration::from_secs(60), "the node to become idle", || {
            let out = cluster.command("sinfo").args(["-h", "-o", "%T"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "idle"
        });
        cluster
    }

    /// A Slurm client command (sbatch, squeue, scontrol, ...) of this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// Run a client command and require success; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out: Output = self.command(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Poll `ready` (every 100 ms) until it holds; panics with the daemon
    /// logs after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ready() {
            assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the queue is empty.
    pub fn wait_idle(&self, timeout: Duration) {
        self.wait_for(timeout, "the queue to drain", || self.run("squeue", &["-h"]).trim().is_empty());
    }

    /// The state of every task of a job (array tasks included).
    pub fn job_states(&self, job: &str) -> Vec<String> {
        self.run("scontrol", &["show", "job", job])
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("JobState="))
            .map(str::to_string)
            .collect()
    }

    /// The job id slurmd uses for a job or array task ("26_1" -> "38").
    pub fn raw_job_id(&self, job: &str) -> String {
        let info = self.run("scontrol", &["show", "job", job]);
        let id = info.split_whitespace().find_map(|w| w.strip_prefix("JobId="));
        id.unwrap_or_else(|| panic!("scontrol show job {job} has no JobId: {info}")).to_string()
    }

    /// The whole slurmd log.
    pub fn slurmd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/slurmd.log")).unwrap_or_default()
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["slurmctld.log", "slurmd.log", "munged.log", "slurmctld.err", "slurmd.err"] {
            let text = std::fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s += &format!("--- {name} (last lines)\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        s
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // Cancel what is left (a failed test), then stop the daemons by PID,
        // slurmd first.
        let _ = self.command("scancel").args(["--user", "root"]).output();
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
