// cni-client drives a whole conflist through libcni, as containerd and CRI-O do, so the
// root tests exercise hostgw chained with the reference portmap and bandwidth plugins
// with real capability arguments (portMappings, bandwidth). `ctr run --cni` passes none.
//
//	cni-client add|check|del CONFLIST CONTAINER_ID NETNS IFNAME [CAP_ARGS_JSON]
//
// Plugins are searched in $CNI_PATH (colon-separated); libcni's result cache goes to
// $CNI_CACHE_DIR, never to /var/lib/cni. ADD prints the final result as JSON on stdout.
// Built by the tests with Debian's golang-go and golang-github-appc-cni-dev (GOPATH mode).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cni-client:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 5 || len(args) > 6 {
		return fmt.Errorf("usage: cni-client add|check|del CONFLIST CONTAINER_ID NETNS IFNAME [CAP_ARGS_JSON]")
	}
	op, conflist, id, netns, ifname := args[0], args[1], args[2], args[3], args[4]
	caps := map[string]interface{}{}
	if len(args) == 6 {
		if err := json.Unmarshal([]byte(args[5]), &caps); err != nil {
			return fmt.Errorf("capability args: %w", err)
		}
	}
	cacheDir := os.Getenv("CNI_CACHE_DIR")
	if cacheDir == "" {
		return fmt.Errorf("CNI_CACHE_DIR is not set")
	}
	list, err := libcni.ConfListFromFile(conflist)
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID:    id,
		NetNS:          netns,
		IfName:         ifname,
		CapabilityArgs: caps,
		CacheDir:       cacheDir,
	}
	ctx := context.Background()
	switch op {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		return res.Print()
	case "check":
		return cni.CheckNetworkList(ctx, list, rt)
	case "del":
		return cni.DelNetworkList(ctx, list, rt)
	}
	return fmt.Errorf("unknown operation %q", op)
}
