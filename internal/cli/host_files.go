package cli

import (
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/handoff-dev/handoff/internal/compose"
	"github.com/handoff-dev/handoff/internal/config"
)

// localFile is a file of this machine that a command run on a server reads there.
type localFile struct {
	Path   string // absolute, on this machine
	Secret bool   // an env file: its values may be secrets
}

// commandFiles lists the local files the command reads: the handoff.yml or compose files
// (-f, else ./handoff.yml), the files they name by a relative path (env_file, compose
// files and their env_file, the project's .env), and --env-file. A path written absolute
// in a file is the server's own, as the Caddyfile, the state dir and the proxy socket
// always are: nothing is copied for it. Missing files are left out; the server's handoff
// says what is missing, as it would locally.
func (c *common) commandFiles(cwd string) []localFile {
	var out []localFile
	seen := map[string]bool{}
	add := func(p string, secret bool) {
		if p == "" {
			return
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		p = filepath.Clean(p)
		if seen[p] {
			return
		}
		if info, err := os.Stat(p); err != nil || !info.Mode().IsRegular() {
			return
		}
		seen[p] = true
		out = append(out, localFile{Path: p, Secret: secret})
	}
	// relative adds name, taken from dir, unless it is the server's (absolute).
	relative := func(dir, name string, secret bool) {
		if name != "" && !filepath.IsAbs(name) {
			add(filepath.Join(dir, name), secret)
		}
	}
	composeFiles := func(files []string, projectDir string) {
		for _, f := range files {
			add(f, false)
			for _, e := range composeEnvFiles(abs(cwd, f)) {
				relative(filepath.Dir(abs(cwd, f)), e, true)
			}
		}
		dir := projectDir
		if dir == "" && len(files) > 0 {
			dir = filepath.Dir(abs(cwd, files[0]))
		}
		if dir != "" {
			relative(abs(cwd, dir), ".env", true) // compose reads it by default
		}
	}
	for _, e := range c.compose.EnvFiles {
		add(e, true)
	}
	files := c.files
	if len(files) == 0 {
		files = []string{config.DefaultFile}
	}
	if len(files) > 1 || compose.IsComposeFile(abs(cwd, files[0])) {
		composeFiles(files, c.compose.ProjectDir)
		return out
	}
	file := abs(cwd, files[0])
	add(file, false)
	f, err := config.Load(file)
	if err != nil {
		return out // the server's handoff reports it
	}
	dir := filepath.Dir(file)
	for _, e := range f.EnvFile {
		relative(dir, e, true)
	}
	if f.Compose != nil {
		for _, e := range f.Compose.EnvFiles {
			relative(cwd, e, true) // compose takes --env-file from the working directory
		}
		var cf []string
		for _, name := range f.Compose.Files {
			if !filepath.IsAbs(name) {
				cf = append(cf, filepath.Join(dir, name))
			}
		}
		if len(f.Compose.Files) == 0 {
			// compose's own lookup: the first of these, and its override file.
			for _, name := range []string{"compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml",
				"compose.override.yaml", "compose.override.yml", "docker-compose.override.yaml", "docker-compose.override.yml"} {
				cf = append(cf, filepath.Join(dir, name))
			}
		}
		composeFiles(cf, cmpDir(c.compose.ProjectDir, dir))
	}
	return out
}

func cmpDir(flag, dir string) string {
	if flag != "" {
		return flag
	}
	return dir
}

func abs(cwd, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(cwd, p)
}

// composeEnvFiles are the env_file entries of a compose file's services, as written.
func composeEnvFiles(file string) []string {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var doc struct {
		Services map[string]struct {
			EnvFile any `yaml:"env_file"`
		} `yaml:"services"`
	}
	if yaml.Unmarshal(data, &doc) != nil {
		return nil
	}
	var out []string
	for _, s := range doc.Services {
		switch v := s.EnvFile.(type) {
		case string:
			out = append(out, v)
		case []any:
			for _, e := range v {
				switch e := e.(type) {
				case string:
					out = append(out, e)
				case map[string]any:
					if p, ok := e["path"].(string); ok {
						out = append(out, p)
					}
				}
			}
		}
	}
	return out
}

// workLayout places the local files in the server's working directory so that every
// relative path between them, and from the working directory the command runs in, is
// what it is here: root is the deepest directory holding them all and cwd.
type workLayout struct {
	root string // on this machine
	cwd  string // the command's working directory, relative to root ("." or a/b)
}

func newWorkLayout(cwd string, files []localFile) workLayout {
	root := filepath.Clean(cwd)
	for _, f := range files {
		for !within(root, f.Path) {
			root = filepath.Dir(root)
		}
	}
	rel, _ := filepath.Rel(root, cwd)
	return workLayout{root: root, cwd: filepath.ToSlash(rel)}
}

func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// remote is where a local file goes, relative to the working directory on the server.
func (l workLayout) remote(p string) string {
	rel, err := filepath.Rel(l.root, p)
	if err != nil {
		return ""
	}
	return filepath.ToSlash(rel)
}

// unsafeName is what a working directory's name may not hold.
var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// workName names the service's working directory on the server: --service, the
// service: of handoff.yml, -p, else the name of the local directory.
func (c *common) workName(cwd string) string {
	name := c.overrides.Service
	if name == "" && (len(c.files) == 0 || !compose.IsComposeFile(abs(cwd, c.files[0]))) {
		file := abs(cwd, config.DefaultFile)
		if len(c.files) == 1 {
			file = abs(cwd, c.files[0])
		}
		if f, err := config.Load(file); err == nil {
			name = f.Service
			if name == "" && f.Compose != nil {
				name = f.Compose.Project
			}
		}
	}
	if name == "" {
		name = c.compose.Name
	}
	if name == "" {
		name = filepath.Base(cwd)
	}
	name = strings.Trim(unsafeName.ReplaceAllString(name, "_"), ".")
	if name == "" {
		name = "default"
	}
	return path.Clean(name)
}
