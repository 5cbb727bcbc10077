package swarm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// process is a lock holder as the kernel of its machine knows it. A flock is dropped
// by the kernel when its process dies; a lease in a label is not, so after a kill -9
// (the OOM killer, a lost SSH session) the next handoff would wait a whole lease. A
// handoff on the same machine can tell instead that the holder is gone: same boot,
// same pid namespace (a container has pids of its own), and no process has that pid
// any more, or another one does (started at another time). A process that cannot be
// looked at (another user's under hidepid, an LSM's refusal) is not known gone.
type process struct {
	Host  string `json:"host"` // besides Boot: machines cloned from one running snapshot share a boot id
	Boot  string `json:"boot"`
	PIDNS string `json:"pidns"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // in clock ticks since boot, /proc/<pid>/stat's 22nd field
}

// procs reads processes: the kernel's /proc, or a test's.
type procs interface {
	// self is this process; ok is false where it cannot be read (not Linux).
	self() (p process, ok bool)
	// exists says whether a process has pid: false only when the kernel says none
	// has (ESRCH); one that may not be signalled (EPERM) exists.
	exists(pid int) bool
	// startOf is when pid started; ok is false when it cannot be read.
	startOf(pid int) (start uint64, ok bool)
}

// gone says whether holder is a process of this machine that has ended. A holder
// that does not say, or is of another machine or pid namespace, is not known gone:
// its lease is waited out.
func gone(p procs, holder *process) bool {
	if holder == nil || holder.PID <= 0 || holder.Boot == "" {
		return false
	}
	me, ok := p.self()
	if !ok || me.Host != holder.Host || me.Boot != holder.Boot || me.PIDNS != holder.PIDNS {
		return false
	}
	if !p.exists(holder.PID) {
		return true
	}
	start, read := p.startOf(holder.PID)
	return read && start != holder.Start // its pid used again
}

// kernel is procs read from /proc.
type kernel struct{}

func (kernel) self() (process, bool) {
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return process{}, false
	}
	ns, err := os.Readlink("/proc/self/ns/pid")
	if err != nil {
		return process{}, false
	}
	// /proc numbers processes in the pid namespace of whoever mounted it: when it
	// is not ours (unshare -p without --mount-proc), its pids are not ours either.
	pid := os.Getpid()
	if self, err := os.Readlink("/proc/self"); err != nil || self != strconv.Itoa(pid) {
		return process{}, false
	}
	start, ok := kernel{}.startOf(pid)
	if !ok {
		return process{}, false
	}
	host, err := os.Hostname()
	if err != nil {
		return process{}, false
	}
	return process{Host: host, Boot: string(bytes.TrimSpace(boot)), PIDNS: ns, PID: pid, Start: start}, true
}

func (kernel) exists(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func (kernel) startOf(pid int) (uint64, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	return statStart(string(stat))
}

// statStart is the start time in a /proc/<pid>/stat line. The command name, in
// parentheses, may hold spaces and parentheses itself: the fields are counted from
// the last ')'. A zombie (state Z) has ended.
func statStart(stat string) (uint64, bool) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:]) // from field 3, the state
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	return start, err == nil
}
