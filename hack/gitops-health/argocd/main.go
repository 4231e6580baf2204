// Command argocd-health reports what Argo CD says of each object read from
// stdin (a JSON array) when health.lua is its resource health override: the
// application controller's own code path, argo-cd's util/lua
// (ResourceHealthOverrides) through gitops-engine's health.GetResourceHealth,
// with the libraries Argo CD opens for an override (UseOpenLibs false).
//
// Usage: argocd-health HEALTH_LUA < objects.json > verdicts.json
//
// It prints one verdict per object, in order, as a JSON array of
// {"status", "message", "error"}: the status and message Argo CD shows for
// the resource, and the error the controller logs when the script fails
// (then Argo CD shows no health of its own for it).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/argoproj/gitops-engine/pkg/health"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"

	appv1 "github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
)

// The key argocd-cm's resource.customizations.health.sidecar-migrator.dev_SidecarMigration
// becomes in Argo CD's settings.
const overrideKey = "sidecar-migrator.dev/SidecarMigration"

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-health:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) != 2 {
		return fmt.Errorf("usage: argocd-health HEALTH_LUA < objects.json")
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		return err
	}
	objects, err := readObjects()
	if err != nil {
		return err
	}
	overrides := lua.ResourceHealthOverrides{
		overrideKey: appv1.ResourceOverride{HealthLua: string(script)},
	}
	verdicts := make([]verdict, 0, len(objects))
	for _, obj := range objects {
		var v verdict
		hs, err := health.GetResourceHealth(&unstructured.Unstructured{Object: obj}, overrides)
		if hs != nil {
			v.Status, v.Message = string(hs.Status), hs.Message
		}
		if err != nil {
			v.Error = err.Error()
		}
		verdicts = append(verdicts, v)
	}
	return json.NewEncoder(os.Stdout).Encode(verdicts)
}

// readObjects reads stdin's JSON array as the API server's objects decode:
// integers as int64 (apimachinery's JSON), not float64, which both engines
// would read differently (Flux skips its observedGeneration check on one).
func readObjects() ([]map[string]any, error) {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return nil, err
	}
	var items []any
	if err := utiljson.Unmarshal(raw, &items); err != nil {
		return nil, fmt.Errorf("reading a JSON array of objects from stdin: %w", err)
	}
	objects := make([]map[string]any, 0, len(items))
	for i, item := range items {
		obj, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("stdin[%d] is not an object", i)
		}
		objects = append(objects, obj)
	}
	return objects, nil
}
