package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

// Where the packages put handoff's files.
const (
	BinPath  = "/usr/bin/handoff"
	UnitPath = "/usr/lib/systemd/system/handoff-proxy.service"
	ManDir   = "/usr/share/man/man1"
)

// PackageFormats are the packages built for each linux target.
var PackageFormats = []string{"deb", "rpm"}

// CompletionPath is where a package of format puts shell's completion
// script: the directory each distribution's shell reads its packages'
// scripts from (zsh's differs between Debian and Fedora).
func CompletionPath(format, shell string) string {
	switch shell {
	case "bash":
		return "/usr/share/bash-completion/completions/handoff"
	case "zsh":
		if format == "deb" {
			return "/usr/share/zsh/vendor-completions/_handoff"
		}
		return "/usr/share/zsh/site-functions/_handoff"
	default:
		return "/usr/share/fish/vendor_completions.d/handoff.fish"
	}
}

// writePackages writes a target's .deb and .rpm into o.Out and returns
// their names.
func writePackages(o Options, t Target, s Stamp, bin string, d Docs) ([]string, error) {
	unit, err := os.ReadFile(filepath.Join(o.Repo, "deploy", "handoff-proxy.service"))
	if err != nil {
		return nil, err
	}
	unit, err = packagedUnit(unit)
	if err != nil {
		return nil, err
	}
	unitFile := filepath.Join(o.Out, "docs", "packaged", "handoff-proxy.service")
	if err := writeFile(unitFile, unit, 0o644); err != nil {
		return nil, err
	}
	var names []string
	for _, format := range PackageFormats {
		info := packageInfo(format, t, s, bin, unitFile, d)
		p, err := nfpm.Get(format)
		if err != nil {
			return nil, err
		}
		name := p.ConventionalFileName(info)
		f, err := os.Create(filepath.Join(o.Out, name))
		if err != nil {
			return nil, err
		}
		err = p.Package(info, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
		names = append(names, name)
	}
	return names, nil
}

// packageInfo describes one package to nfpm. Its version is the stamp's
// (nfpm turns v1.2.3-rc.1 into 1.2.3~rc.1, which sorts before 1.2.3).
func packageInfo(format string, t Target, s Stamp, bin, unit string, d Docs) *nfpm.Info {
	file := func(src, dst string, mode os.FileMode) *files.Content {
		return &files.Content{Source: src, Destination: dst, Type: files.TypeFile, FileInfo: &files.ContentFileInfo{Mode: mode, MTime: s.Date}}
	}
	contents := files.Contents{
		file(bin, BinPath, 0o755),
		file(unit, UnitPath, 0o644),
	}
	for shell, path := range d.Completions {
		contents = append(contents, file(path, CompletionPath(format, shell), 0o644))
	}
	for _, page := range d.ManPagesGz {
		contents = append(contents, file(page, ManDir+"/"+filepath.Base(page), 0o644))
	}
	return nfpm.WithDefaults(&nfpm.Info{
		Name:       "handoff",
		Arch:       t.Arch,
		Platform:   t.OS,
		Version:    s.Version,
		Section:    "admin",
		Priority:   "optional",
		Maintainer: "The handoff developers <https://github.com/handoff-dev/handoff/issues>",
		Description: "Deploy a new version of a Dockerized web app behind Caddy with zero failed requests\n" +
			"handoff starts the new release beside the old, waits until it is healthy,\n" +
			"switches Caddy (or its own always-on proxy, the handoff-proxy service) to it,\n" +
			"drains the old one and retires it. One static binary.",
		Vendor:   "handoff",
		Homepage: "https://github.com/handoff-dev/handoff",
		MTime:    s.Date,
		Overridables: nfpm.Overridables{
			Contents: contents,
			RPM:      nfpm.RPM{BuildHost: "localhost"}, // not the builder's name
		},
	})
}

// packagedUnit is deploy/handoff-proxy.service as a package installs it:
// the binary where the package puts it, and a header that says how to
// start it instead of how to copy it.
func packagedUnit(unit []byte) ([]byte, error) {
	const from, to = "ExecStart=/usr/local/bin/handoff ", "ExecStart=" + BinPath + " "
	if bytes.Count(unit, []byte(from)) != 1 {
		return nil, fmt.Errorf("deploy/handoff-proxy.service: no line %q to point at %s", strings.TrimSpace(from), BinPath)
	}
	unit = bytes.Replace(unit, []byte(from), []byte(to), 1)
	i := bytes.Index(unit, []byte("[Unit]"))
	if i < 0 {
		return nil, fmt.Errorf("deploy/handoff-proxy.service: no [Unit] section")
	}
	header := "# systemd unit for `handoff proxy`, installed by the handoff package. Start it:\n" +
		"#   systemctl enable --now handoff-proxy\n" +
		"# `systemctl reload handoff-proxy` restarts it (after an upgrade of the package,\n" +
		"# say) without dropping a request: SIGHUP hands its sockets to a new process.\n"
	return append([]byte(header), unit[i:]...), nil
}
