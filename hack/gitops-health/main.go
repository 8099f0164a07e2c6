// gitops-health reads kubetune objects the way the two GitOps tools do, with
// their own engines rather than a re-implementation:
//
//   - Argo CD: a resource health check is Lua run by gopher-lua (Lua 5.1), the
//     library Argo CD embeds. The VM is set up like Argo CD's util/lua runLua
//     for a script from argocd-cm (useOpenLibs unset): only the package, base
//     and table libraries (Argo CD adds a trimmed os library, which kubetune's
//     scripts do not use; leaving it out makes a script that did fail here), the
//     object as the global `obj`, a 1 s deadline,
//     and the table the script returns read as {status, message}; a status
//     outside Argo CD's set reads as Unknown, as Argo CD does.
//   - Flux: kstatus from sigs.k8s.io/cli-utils (status.Compute), what Flux's
//     health checks and kustomize-controller's wait call.
//
// Usage:
//
//	gitops-health argocd <dir>/health_test.yaml   every case, one JSON object per case
//	gitops-health kstatus <file.yaml>...          kstatus of each object, one JSON object per file
//
// Output is JSON lines on stdout; a case whose result differs from the
// expectation (argocd) sets exit status 1, an unreadable input exit status 2.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// Argo CD's health status codes (gitops-engine pkg/health).
var validHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type healthTest struct {
	Tests []struct {
		HealthStatus healthStatus `json:"healthStatus"`
		InputPath    string       `json:"inputPath"`
	} `json:"tests"`
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gitops-health argocd <health_test.yaml> | kstatus <file.yaml>...")
		os.Exit(2)
	}
	var err error
	failed := false
	switch os.Args[1] {
	case "argocd":
		failed, err = runArgoTests(os.Args[2])
	case "kstatus":
		err = runKstatus(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q: want argocd or kstatus", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gitops-health:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

func readObject(path string) (*unstructured.Unstructured, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// UnmarshalJSON keeps integers as int64, as the apiserver's objects in Argo CD's and Flux's caches are.
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(js); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

func runArgoTests(testFile string) (bool, error) {
	raw, err := os.ReadFile(testFile)
	if err != nil {
		return false, err
	}
	var spec healthTest
	if err := yaml.UnmarshalStrict(raw, &spec); err != nil {
		return false, fmt.Errorf("%s: %w", testFile, err)
	}
	if len(spec.Tests) == 0 {
		return false, fmt.Errorf("%s: tests: no cases", testFile)
	}
	dir := filepath.Dir(testFile)
	script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
	if err != nil {
		return false, err
	}
	failed := false
	out := json.NewEncoder(os.Stdout)
	for _, tc := range spec.Tests {
		obj, err := readObject(filepath.Join(dir, tc.InputPath))
		if err != nil {
			return false, err
		}
		got, runErr := executeHealthLua(obj, string(script))
		result := map[string]any{"inputPath": tc.InputPath, "expected": tc.HealthStatus}
		if runErr != nil {
			result["error"] = runErr.Error()
		} else {
			result["actual"] = got
		}
		result["pass"] = runErr == nil && *got == tc.HealthStatus
		failed = failed || !result["pass"].(bool)
		if err := out.Encode(result); err != nil {
			return false, err
		}
	}
	return failed, nil
}

// executeHealthLua mirrors argo-cd util/lua VM.runLua + ExecuteHealthLua with UseOpenLibs=false.
func executeHealthLua(obj *unstructured.Unstructured, script string) (*healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for name, open := range map[string]lua.LGFunction{
		lua.LoadLibName: lua.OpenPackage, lua.BaseLibName: lua.OpenBase, lua.TabLibName: lua.OpenTable,
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(open), NRet: 0, Protect: true}, lua.LString(name)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj.Object))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	table, ok := ret.(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	hs := &healthStatus{}
	for key, dst := range map[string]*string{"status": &hs.Status, "message": &hs.Message} {
		switch v := table.RawGetString(key).(type) {
		case lua.LString:
			*dst = string(v)
		case *lua.LNilType:
		default:
			return nil, fmt.Errorf("hs.%s is a %s, not a string", key, v.Type())
		}
	}
	if !validHealth[hs.Status] {
		return &healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return hs, nil
}

// decodeValue converts the object like argo-cd util/lua decodeValue: maps become hash tables, slices arrays.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}

func runKstatus(files []string) error {
	out := json.NewEncoder(os.Stdout)
	for _, path := range files {
		obj, err := readObject(path)
		if err != nil {
			return err
		}
		res, err := status.Compute(obj)
		if err != nil {
			return fmt.Errorf("%s: kstatus: %w", path, err)
		}
		if err := out.Encode(map[string]any{"path": path, "status": res.Status.String(), "message": res.Message}); err != nil {
			return err
		}
	}
	return nil
}
