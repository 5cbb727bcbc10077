package cli

import (
	"cmp"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/mattn/go-shellwords"

	"github.com/handoff-dev/handoff/internal/remote"
)

// serverBinDir is where handoff keeps its own binaries on a server, from the home
// directory: one file per version, so that two versions deploying side by side never
// replace each other's binary.
const serverBinDir = ".cache/handoff/bin"

// serverBinary names the binary of version v on the server.
func serverBinary(v versionInfo) string {
	return serverBinDir + "/handoff-" + strings.Trim(unsafeName.ReplaceAllString(v.Version, "_"), ".")
}

// probe is what one look at the server found: its platform and the binary at
// serverBinary, if any.
type probe struct {
	OS, Arch string       // as GOOS and GOARCH name them; Arch "" when handoff has no build for it
	Machine  string       // uname -s -m, for messages
	Version  *versionInfo // nil: no binary there, or one that did not say its version
	Sum      string       // the binary's sha256
}

// pruneScript, run once bin has been put on the server, removes the builds of handoff an
// upload put there more than keepBuilds ago (each is a binary of some 20 MB, one per
// version ever deployed) and the half-uploads a dropped connection left. A build in use
// is safe: one started runs on after its file is gone, and a command that finds its
// build missing puts it there again.
func pruneScript(bin string) string {
	return "find " + remote.Quote(serverBinDir) + " -maxdepth 1 -type f \\( -name 'handoff-*' -o -name '.handoff-*.upload-*' \\) ! -name " +
		remote.Quote(path.Base(bin)) + " -mtime +" + strconv.Itoa(keepBuilds) + " -delete"
}

// keepBuilds is how many days an older build of handoff is kept on a server.
const keepBuilds = 30

// probeScript prints uname -s -m, then the binary's `version --json` on one line, then
// its sha256.
func probeScript(bin string) string {
	return "uname -s -m; p=" + remote.Quote(bin) + `; if [ -x "$p" ]; then "$p" version --json --host=local 2>/dev/null | tr -d '\n'; echo; sha256sum "$p" | cut -d' ' -f1; fi`
}

// parseProbe reads probeScript's output.
func parseProbe(out string) probe {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var p probe
	if len(lines) > 0 {
		p.Machine = strings.TrimSpace(lines[0])
		f := strings.Fields(p.Machine)
		if len(f) == 2 {
			p.OS = strings.ToLower(f[0])
			p.Arch = map[string]string{"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[f[1]]
		}
	}
	if len(lines) > 1 {
		var v versionInfo
		if json.Unmarshal([]byte(lines[1]), &v) == nil && v.Version != "" {
			p.Version = &v
		}
	}
	if len(lines) > 2 {
		p.Sum = strings.TrimSpace(lines[2])
	}
	return p
}

// exact says whether v's version and commit name its bytes: not a build of a checkout
// with changes, nor one whose commit is unknown — unless its version is a module's
// (`go install …@v0.3.0` records no commit: the module proxy's checksum names it).
func exact(v versionInfo) bool {
	if strings.Contains(v.Version, "dirty") || v.Version == "(devel)" {
		return false
	}
	return v.Commit != unknown || strings.HasPrefix(v.Version, "v")
}

// sameBuild says whether the server's binary is this build: the same version and commit,
// and, when those do not name the bytes (exact), the same sha256 as src (when src is
// known).
func sameBuild(local versionInfo, server probe, srcSum string) bool {
	if server.Version == nil || server.Version.Version != local.Version || server.Version.Commit != local.Commit {
		return false
	}
	return exact(local) || srcSum == "" || srcSum == server.Sum
}

// binarySource is where a build of this version for the server's platform is found:
// this very binary when it is one, else a release build in a dist directory
// (dist/linux_<arch>/handoff, as `make release-snapshot` writes it) of the same version.
type binarySource struct {
	exe      string   // os.Executable
	goos     string   // runtime.GOOS
	goarch   string   // runtime.GOARCH
	distDirs []string // searched in order
	// version reads the version a binary file was built with.
	version func(path string) (versionInfo, error)
}

func defaultBinarySource() binarySource {
	exe, _ := os.Executable()
	var dirs []string
	if d := os.Getenv("HANDOFF_DIST"); d != "" {
		dirs = append(dirs, d)
	}
	if d, err := os.UserCacheDir(); err == nil {
		dirs = append(dirs, filepath.Join(d, "handoff", "dist"))
	}
	return binarySource{exe: exe, goos: runtime.GOOS, goarch: runtime.GOARCH, distDirs: dirs, version: fileVersion}
}

// find returns the file to put on a server of platform goos/goarch for version v, or an
// error saying what to build.
func (b binarySource) find(v versionInfo, p probe) (string, error) {
	if p.OS != "linux" || p.Arch == "" {
		return "", fmt.Errorf("the server is %q: handoff runs on linux amd64 and arm64 servers", p.Machine)
	}
	if b.goos == "linux" && b.goarch == p.Arch && b.exe != "" {
		return b.exe, nil
	}
	for _, d := range b.distDirs {
		f := filepath.Join(d, "linux_"+p.Arch, "handoff")
		if fv, err := b.version(f); err == nil && fv.Version == v.Version && fv.Commit == v.Commit {
			return f, nil
		}
	}
	where := "$HANDOFF_DIST"
	if len(b.distDirs) > 0 {
		where = b.distDirs[len(b.distDirs)-1]
	}
	return "", fmt.Errorf("no handoff %s for linux/%s here to put on the server: build it with `make release-snapshot TARGETS=linux/%s` at this commit and copy dist/linux_%s to %s, or install handoff %s on the server as %s",
		v.Version, p.Arch, p.Arch, p.Arch, filepath.Join(where, "linux_"+p.Arch), v.Version, "~/"+serverBinary(v))
}

// fileVersion reads the version a handoff binary (of any platform) was built with, as
// buildVersion would print it there.
func fileVersion(path string) (versionInfo, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return versionInfo{}, err
	}
	// A release build (-trimpath) records no -ldflags (go.dev/issue/52372):
	// its stamp is the version.json tools/release writes beside it.
	if data, err := os.ReadFile(filepath.Join(filepath.Dir(path), "version.json")); err == nil {
		var v versionInfo
		if json.Unmarshal(data, &v) == nil && v.Version != "" && v.Commit != "" {
			return versionInfo{Version: v.Version, Commit: v.Commit, Date: cmp.Or(v.Date, unknown)}, nil
		}
	}
	r := recorded(bi)
	x := ldflagsX(r.ldflags)
	const pkg = "github.com/handoff-dev/handoff/internal/cli."
	return versionInfo{
		Version: cmp.Or(x[pkg+"Version"], r.module, "(devel)"),
		Commit:  cmp.Or(x[pkg+"Commit"], r.revision, unknown),
		Date:    cmp.Or(x[pkg+"Date"], r.time, unknown),
	}, nil
}

// ldflagsX reads the -X name=value settings of a build's -ldflags.
func ldflagsX(ldflags string) map[string]string {
	x := map[string]string{}
	words, _ := shellwords.Parse(ldflags)
	for i, w := range words {
		var kv string
		switch {
		case w == "-X" && i+1 < len(words):
			kv = words[i+1]
		case strings.HasPrefix(w, "-X="):
			kv = strings.TrimPrefix(w, "-X=")
		default:
			continue
		}
		if k, v, ok := strings.Cut(kv, "="); ok {
			x[k] = v
		}
	}
	return x
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
