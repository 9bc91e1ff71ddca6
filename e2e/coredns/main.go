// Command coredns is CoreDNS with only the plugins the e2e cluster uses (see e2e/coredns/README.md).
//
// Owned by e2e/coredns. Upstream's main imports every plugin (core/plugin); this one imports the few
// below and sets the directive order to match, so the binary cannot forward anywhere: no `forward`,
// `grpc`, `etcd` or cloud plugins are compiled in.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is the plugin chain order: a subset of upstream's plugin.cfg, in upstream's order.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
