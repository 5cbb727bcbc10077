package swarm

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/handoff-dev/handoff/internal/deploy"
)

// PartStatus is a row per node of the swarm (deploy.Parts): the node as Swarm
// sees it and its proxy task, and what that proxy serves, read by a `ctl status`
// job. A node the job did not reach, or whose proxy did not answer (before the
// job's timeout, too), is a row that says so: a status should show the node that
// is amiss, not stop at it. The nodes are listed after the job, so a node the job
// ran on is one Swarm knew then.
func (p *Proxies) PartStatus(ctx context.Context) ([]deploy.PartStatus, error) {
	results, err := p.read(ctx)
	if len(results) == 0 && err != nil {
		return nil, fmt.Errorf("%w: read the proxies of %s: %w", deploy.ErrProxyUnreached, p.Service, err)
	}
	nodes, err := ProxyNodes(ctx, p.API)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", deploy.ErrProxyUnreached, err)
	}
	return partRows(nodes, results), nil
}

// partRows puts each node with its proxy's answer. The nodes are read after the
// job: a node the job has no result for joined since; one it has a result for
// that the nodes lack left since, and comes last.
func partRows(nodes []ProxyNode, results []NodeResult) []deploy.PartStatus {
	answers := map[string]NodeResult{}
	for _, r := range results {
		answers[r.NodeID] = r
	}
	out := make([]deploy.PartStatus, 0, len(nodes))
	for _, n := range nodes {
		row := deploy.PartStatus{Name: n.Hostname, Role: n.Role, State: n.State, Availability: n.Availability, Proxy: n.Proxy}
		r, asked := answers[n.ID]
		delete(answers, n.ID)
		if asked {
			readPart(&row, r)
		} else {
			row.Note = "not asked: the node joined after its proxy was read"
		}
		if n.Proxy != "running" && n.Err != "" {
			row.Note = strings.TrimPrefix(row.Note+"; its proxy task: "+n.Err, "; ")
		}
		out = append(out, row)
	}
	var rest []deploy.PartStatus
	for _, r := range answers {
		row := deploy.PartStatus{Name: r.Hostname}
		readPart(&row, r)
		row.Note = strings.TrimSuffix("the node left the swarm after its proxy was read; "+row.Note, "; ")
		rest = append(rest, row)
	}
	slices.SortFunc(rest, func(a, b deploy.PartStatus) int { return strings.Compare(a.Name, b.Name) })
	return append(out, rest...)
}

// readPart fills row with what a node's `ctl status` answered.
func readPart(row *deploy.PartStatus, r NodeResult) {
	if r.State == NotReached {
		row.Note = "not reached: " + cmp.Or(r.Err, "no task of the job ran there")
		return
	}
	if !terminal(swarm.TaskState(r.State)) {
		row.Note = "its proxy did not answer before the job's timeout (task " + r.State + ")"
		return
	}
	ns, why := readState(r)
	switch {
	case why != "":
		row.Note = "its proxy did not answer: " + why
	case ns.state == nil:
		row.Note = "its proxy has no route for the service"
	default:
		st := ns.state
		row.Generation, row.Route = st.Generation, routeOf(st).String()
		var n int64
		for _, b := range st.Route {
			for _, e := range b.Endpoints {
				n += e.InFlight
			}
		}
		for _, d := range st.Draining {
			n += d.InFlight
			row.Draining += d.InFlight
		}
		row.InFlight = &n
	}
}

// LastSwitch is how each node took the last SetRoute (deploy.Parts); none when it
// was refused before its job ran.
func (p *Proxies) LastSwitch() []deploy.PartResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.last)
}

func (p *Proxies) keepSwitch(results []deploy.PartResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = results
}

// partDetailMax bounds what a result keeps of a node's last line: the history
// lives in a label of bounded size (MaxHistoryBytes).
const partDetailMax = 200

// partUnfinished is the result of a node whose switch had not ended when the job
// did (interrupted, or the job's timeout during its drain): it may have switched.
const partUnfinished = "unfinished"

// switchResults is a switch job's results as the record keeps them, read as
// SetRoute reads them. took is the job's time, the same for every node: a result
// does not say when its node's task ran. proxies, the nodes as listed after the
// job (none when not read), tell a node not reached because it runs no proxy (a
// drained manager) from one the switch missed.
func switchResults(results []NodeResult, route string, gen uint64, took time.Duration, proxies []ProxyNode) []deploy.PartResult {
	proxyless := map[string]bool{}
	for _, n := range proxies {
		proxyless[n.ID] = n.State == "ready" && n.Proxy != "running" // a node down keeps its reason
	}
	var out []deploy.PartResult
	for _, r := range results {
		pr := deploy.PartResult{Node: r.Hostname, Route: route, Generation: gen, ExitCode: r.ExitCode, Took: took}
		switch {
		case r.State == NotReached && proxyless[r.NodeID]:
			pr.Result, pr.Detail, pr.Took = deploy.PartNotReached, "no proxy there: "+r.Err, 0
		case r.State == NotReached:
			pr.Result, pr.Detail, pr.Took = deploy.PartNotReached, r.Err, 0
		case !terminal(swarm.TaskState(r.State)):
			pr.Result, pr.Detail = partUnfinished, "the job ended first (task "+r.State+"): "+lastLine(r)
		case r.State == "complete":
			pr.Result, pr.Detail = deploy.PartSwitched, drainedOf(r)
		case r.ExitCode == ctlDrainTimeout:
			pr.Result, pr.Detail = deploy.PartDrainTimeout, lastLine(r)
		case r.ExitCode == ctlNotConverged, r.ExitCode == ctlOldGeneration:
			pr.Result, pr.Detail = deploy.PartRefused, lastLine(r)
		default:
			pr.Result, pr.Detail = deploy.PartFailed, r.State+": "+lastLine(r)
		}
		pr.Detail = cut(pr.Detail, partDetailMax)
		out = append(out, pr)
	}
	return out
}

// drainedOf says what a node's switch drained, from its last progress line
// (`ctl switch`'s "done"); its line as it is when that does not read.
func drainedOf(r NodeResult) string {
	line := lastLine(r)
	var done struct {
		Phase   string   `json:"phase"`
		Retired []string `json:"retired"`
	}
	if json.Unmarshal([]byte(line), &done) != nil || done.Phase != "done" {
		return line
	}
	if len(done.Retired) == 0 {
		return "nothing to drain"
	}
	return "drained " + strings.Join(done.Retired, ", ")
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// statusArgs asks a node's proxy what it serves of the service.
func (p *Proxies) statusArgs() []string {
	return []string{"proxy", "ctl", "status", "--socket", ProxySocket, "--service", p.Service, "--json"}
}
