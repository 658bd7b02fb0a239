"""`kvmkit lab` boots the nested KVM host, runs a command there and hands back its output and status."""

import subprocess
import sys


def kvmkit_lab(*command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "lab", "--", *command],
                          capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def test_lab_has_svm_and_kvm_and_shares_the_working_directory(tmp_path):
    script = ("grep -c svm /proc/cpuinfo; test -c /dev/kvm && echo kvm-is-a-char-device; pwd; "
              "echo note-on-stderr >&2; echo written-in-lab > result.txt; exit 3")
    done = kvmkit_lab("sh", "-c", script, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert int(lines[0]) >= 1
    assert "kvm-is-a-char-device" in lines
    assert str(tmp_path) in lines
    assert "note-on-stderr" in done.stderr
    assert (tmp_path / "result.txt").read_text() == "written-in-lab\n"


def test_lab_passes_on_a_failing_status(tmp_path):
    done = kvmkit_lab("false", cwd=tmp_path)
    assert done.returncode == 1


def test_lab_without_command_is_an_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "lab"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 2 and "command" in done.stderr


def test_a_lab_machine_that_resets_is_an_infrastructure_failure(tmp_path):
    """The lab's kernel rebooting under the job (here forced with sysrq) is exit 120, not the job's status."""
    done = kvmkit_lab("sh", "-c", "echo b > /proc/sysrq-trigger; sleep 30; exit 7", cwd=tmp_path)
    assert done.returncode == 120, done.stderr
    assert "the lab machine itself reset" in done.stderr


def test_append_reaches_the_lab_kernel_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "lab", "--append", "kvmkit.probe=42", "--",
                           "cat", "/proc/cmdline"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "kvmkit.probe=42" in done.stdout.split() and "loglevel=5" in done.stdout.split()


def test_a_lab_whose_init_stops_beating_is_an_infrastructure_failure(tmp_path):
    """A hung lab kernel runs no processes, so the init's heartbeat stops; here the heartbeat is frozen on purpose."""
    done = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "lab", "--hang-limit", "20", "--", "sh", "-c",
                           "kill -STOP $(cat /run/kvmkit-lab/heartbeat.pid); sleep 200; exit 7"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 120, done.stderr
    assert "no heartbeat" in done.stderr
