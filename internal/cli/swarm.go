package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/moby/moby/client"
	"github.com/spf13/cobra"

	"github.com/handoff-dev/handoff/internal/config"
	"github.com/handoff-dev/handoff/internal/deploy"
	"github.com/handoff-dev/handoff/internal/docker"
	"github.com/handoff-dev/handoff/internal/swarm"
)

// newSwarmCmd is `handoff swarm`: what a swarm needs once before handoff deploys on it.
func newSwarmCmd(c *common) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "swarm",
		Short: "Prepare a Docker Swarm for handoff: the overlay network and handoff proxy on every node",
	}
	var o swarm.SetupOptions
	setup := &cobra.Command{
		Use:   "setup",
		Short: "Create the overlay network and handoff proxy as a global service, and check one proxy runs on every node",
		Long: `handoff swarm setup runs against a manager of the swarm (DOCKER_HOST, or --host).
It creates the overlay network the colour services and the proxies share, and
handoff proxy as a global service on it: one task per node, serving the given
ports published in host mode on each node, where the front balancer points once.
It waits until every ready node runs its proxy. Run it again any time: what is
there as handoff made it is left alone; another image or other ports need --update,
which restarts every node's proxy.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.ProxyImage == "" {
				return fmt.Errorf("%w: give --proxy-image, an image with a static handoff at /handoff in a registry every node reaches (deploy/Dockerfile.proxy)", errUsage)
			}
			api, err := client.New(client.FromEnv)
			if err != nil {
				return err
			}
			defer api.Close()
			if o.Auth, err = docker.RegistryAuth(o.ProxyImage); err != nil {
				return err
			}
			res, err := swarm.Setup(cmd.Context(), api, o)
			for _, w := range res.Warnings {
				fmt.Fprintln(c.io.Err, "warning: "+w)
			}
			if c.json {
				if jerr := c.io.JSON(res); jerr != nil {
					return jerr
				}
			} else if res.Proxy != "" {
				network := "there"
				if res.NetworkCreated {
					network = "created"
				}
				fmt.Fprintf(c.io.Out, "network %s: %s; %s %s (%s), ports %v\n", res.Network, network, swarm.ProxyService, res.Proxy, res.Image, res.Ports)
				printProxyNodes(c.io.Out, res.Nodes)
			}
			return err
		},
	}
	f := setup.Flags()
	f.StringVar(&o.ProxyImage, "proxy-image", "", "an image with a static handoff at /handoff (deploy/Dockerfile.proxy), in a registry every node pulls from")
	f.StringVar(&o.Network, "network", swarm.DefaultNetwork, "the overlay network of the colour services and the proxies")
	f.StringVar(&o.Subnet, "subnet", "", "the overlay's subnet when it is created, like 10.240.0.0/20 (default: Swarm's pick)")
	f.IntSliceVar(&o.Ports, "port", []int{swarm.DefaultProxyPort}, "a port each node's proxy serves on, published on the node (repeat or comma-separate)")
	f.StringSliceVar(&o.Trusted, "trusted-proxies", nil, "front balancers (IPs or CIDRs) whose X-Forwarded-* headers the proxies keep")
	f.BoolVar(&o.Update, "update", false, "change a proxy service that runs another image or ports (every node's proxy restarts)")
	f.DurationVar(&o.Wait, "wait", 2*time.Minute, "how long to wait for a running proxy on every ready node")

	status := &cobra.Command{
		Use:   "status",
		Short: "List the swarm's nodes, each with its handoff proxy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, err := client.New(client.FromEnv)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			if err := swarm.RequireManager(ctx, api); err != nil {
				return fmt.Errorf("swarm status: %w", err)
			}
			nodes, err := swarm.ProxyNodes(ctx, api)
			if err != nil {
				return err
			}
			if c.json {
				return c.io.JSON(nodes)
			}
			printProxyNodes(c.io.Out, nodes)
			return nil
		},
	}
	cmd.AddCommand(setup, status)
	return cmd
}

func printProxyNodes(out io.Writer, nodes []swarm.ProxyNode) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tROLE\tSTATE\tAVAILABILITY\tPROXY")
	for _, n := range nodes {
		proxy := n.Proxy
		switch {
		case proxy == "":
			proxy = "none"
		case n.Err != "":
			proxy += ": " + n.Err
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", n.Hostname, n.Role, n.State, n.Availability, proxy)
	}
	w.Flush()
}

// connectSwarm wires the procedure to a swarm (engine: swarm): the colour services of
// the manager DOCKER_HOST names, every node's handoff proxy switched by a job on it,
// and the lock and history in the swarm's record services, shared by every manager.
// Every call to the manager rides out the loss of the swarm's leader (swarm.Patient).
func (c *common) connectSwarm(s config.Settings) (*deploy.Deployer, func(), error) {
	manager, err := client.New(client.FromEnv)
	if err != nil {
		return nil, nil, err
	}
	proxyAuth, err := docker.RegistryAuth(s.Swarm.ProxyImage)
	if err != nil {
		manager.Close()
		return nil, nil, err
	}
	api := swarm.NewPatient(manager)
	store := swarm.NewStore(api)
	store.Wait = c.lockWait
	name := s.Service.Name
	d := &deploy.Deployer{
		Runtime: &swarm.Runtime{API: api, Network: s.Swarm.Network, Replicas: uint64(s.Swarm.Replicas),
			Constraints: s.Swarm.Constraints, MaxPerNode: uint64(s.Swarm.MaxPerNode), Auth: docker.RegistryAuth},
		Proxy: &swarm.Proxies{API: api, Service: name, Image: s.Swarm.ProxyImage, Auth: proxyAuth, Port: s.Swarm.Port,
			Network: s.Swarm.Network, Drain: s.Service.DrainTimeout,
			Generation: func(ctx context.Context) (uint64, error) { return store.NextGeneration(ctx, name) }},
		History: store,
		Locker:  store,
		Report:  &reporter{io: c.io},
	}
	return d, func() { _ = manager.Close() }, nil
}
