"""KWOK fake nodes and the pod lifecycle they simulate.

KWOK plays kubelet for nodes annotated kwok.x-k8s.io/node=fake. Its Stages
(below; they replace KWOK's defaults) decide what happens to pods:

- node-initialize / node-heartbeat: nodes become Ready and stay Ready; a node
  annotated `kwok.kubetune.io/not-ready: "true"` is reported NotReady instead
  (the node-lifecycle controller then taints it, as for a lost GPU node).
- pod-ready: a scheduled pod gets an IP and Running, ready containers.
- pod-complete: a Running pod owned by a Job ends Succeeded (exit 0) after
  1 s, or after the Go duration in annotation `kwok.kubetune.io/run-duration`
  (e.g. "30s"; "87600h" keeps it running until the test acts).
- pod-fail: a Running pod annotated `kwok.kubetune.io/exit-code: "65"` ends
  Failed, its containers terminated with that exit code (and
  `kwok.kubetune.io/reason`, default Error), after the same run duration; the
  annotation is on the pod template so Job podFailurePolicy can be tested.
- pod-delete: deleted pods go away at once (no real kubelet to confirm).
- pod-image-pull-error / pod-image-pull-backoff: a pod whose image starts with
  UNPULLABLE_IMAGE_PREFIX never starts: its containers wait with ErrImagePull,
  then ImagePullBackOff, with messages like a kubelet's.

Pods whose containers use an image in RUNNER_IMAGES are skipped by every pod
Stage: the pod runner (tests/support/pod_runner) runs them as real processes.
"""

from __future__ import annotations

import json
import textwrap

from kubernetes import client as k8s

ANNOTATION_PREFIX = "kwok.kubetune.io"
EXIT_CODE = f"{ANNOTATION_PREFIX}/exit-code"
REASON = f"{ANNOTATION_PREFIX}/reason"
RUN_DURATION = f"{ANNOTATION_PREFIX}/run-duration"
NOT_READY = f"{ANNOTATION_PREFIX}/not-ready"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
UNPULLABLE_IMAGE_PREFIX = "registry.invalid/"  # .invalid never resolves (RFC 2606)
_UNPULLABLE = f'.spec.containers.[] | select(.image | startswith("{UNPULLABLE_IMAGE_PREFIX}")) | .image'
# Images the pod runner executes for real (tests/support/pod_runner/images.py); KWOK leaves their pods alone.
RUNNER_IMAGES = ("kubetune-trainer:local", "kubetune-vllm-standin:local", "kubetune-operator:local")
_RUNNER_IMAGES = json.dumps(list(RUNNER_IMAGES))


def _ann(key: str) -> str:
    return f'.metadata.annotations["{key}"]'


_NODE_CONDITIONS = """\
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $lastTransitionTime | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
"""

STAGES = textwrap.dedent(f"""\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: node-initialize}}
spec:
  resourceRef: {{apiGroup: v1, kind: Node}}
  selector:
    matchExpressions:
    - {{key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: NotIn, values: ['True']}}
    - {{key: '{_ann(NOT_READY)}', operator: DoesNotExist}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $lastTransitionTime := $now }}}}
{textwrap.indent(_NODE_CONDITIONS, "      ")}
      addresses:
      - {{address: {{{{ NodeIP | Quote }}}}, type: InternalIP}}
      - {{address: {{{{ .metadata.name | Quote }}}}, type: Hostname}}
      allocatable: {{{{ or .status.allocatable .status.capacity | toJson }}}}
      capacity: {{{{ .status.capacity | toJson }}}}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        kubeProxyVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        containerRuntimeVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        kernelVersion: {{{{ printf "kwok-%s" Version | Quote }}}}
        bootID: ""
        machineID: ""
        osImage: ""
        systemUUID: ""
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: node-heartbeat}}
spec:
  resourceRef: {{apiGroup: v1, kind: Node}}
  selector:
    matchExpressions:
    - {{key: '.status.phase', operator: In, values: [Running]}}
    - {{key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: In, values: ['True']}}
    - {{key: '{_ann(NOT_READY)}', operator: DoesNotExist}}
  # Leases carry the real heartbeat; this only refreshes the conditions now and then.
  delay: {{durationMilliseconds: 60000}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}}}
{textwrap.indent(_NODE_CONDITIONS, "      ")}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: node-not-ready}}
spec:
  resourceRef: {{apiGroup: v1, kind: Node}}
  selector:
    matchExpressions:
    - {{key: '{_ann(NOT_READY)}', operator: In, values: ['true']}}
    - {{key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: In, values: ['True']}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $now | Quote }}}}
        message: "kwok: node marked not ready by the test"
        reason: KubeletNotReady
        status: "False"
        type: Ready
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-ready}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '.spec.containers.[].image', operator: NotIn, values: {_RUNNER_IMAGES}}}
    - {{key: '.status.podIP', operator: DoesNotExist}}
    - {{key: '{_UNPULLABLE}', operator: DoesNotExist}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Initialized}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Ready}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: ContainersReady}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: true
        started: true
        restartCount: 0
        state: {{running: {{startedAt: {{{{ $now | Quote }}}}}}}}
      {{{{ end }}}}
      hostIP: {{{{ NodeIPWith .spec.nodeName | Quote }}}}
      podIP: {{{{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}}}
      phase: Running
      startTime: {{{{ $now | Quote }}}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-image-pull-error}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '{_UNPULLABLE}', operator: Exists}}
    - {{key: '.status.containerStatuses', operator: DoesNotExist}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Initialized}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: Ready, reason: ContainersNotReady}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: ContainersReady, reason: ContainersNotReady}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: PodScheduled}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        started: false
        restartCount: 0
        state:
          waiting:
            reason: ErrImagePull
            message: {{{{ printf "failed to pull and unpack image %q: failed to resolve reference %q: dial tcp: lookup registry.invalid: no such host" .image .image | Quote }}}}
      {{{{ end }}}}
      hostIP: {{{{ NodeIPWith .spec.nodeName | Quote }}}}
      phase: Pending
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-image-pull-backoff}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '{_UNPULLABLE}', operator: Exists}}
    - {{key: '.status.containerStatuses.[].state.waiting.reason', operator: In, values: [ErrImagePull]}}
  delay: {{durationMilliseconds: 2000}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: Initialized}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: Ready, reason: ContainersNotReady}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: ContainersReady, reason: ContainersNotReady}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "True", type: PodScheduled}}
      hostIP: {{{{ NodeIPWith .spec.nodeName | Quote }}}}
      phase: Pending
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        started: false
        restartCount: 0
        state:
          waiting:
            reason: ImagePullBackOff
            message: {{{{ printf "Back-off pulling image %q" .image | Quote }}}}
      {{{{ end }}}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-complete}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '.spec.containers.[].image', operator: NotIn, values: {_RUNNER_IMAGES}}}
    - {{key: '.status.phase', operator: In, values: [Running]}}
    - {{key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job]}}
    - {{key: '{_ann(EXIT_CODE)}', operator: DoesNotExist}}
  delay:
    durationMilliseconds: 1000
    durationFrom: {{expressionFrom: '{_ann(RUN_DURATION)}'}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: Ready, reason: PodCompleted}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: ContainersReady, reason: PodCompleted}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        started: false
        restartCount: 0
        state: {{terminated: {{exitCode: 0, reason: Completed, startedAt: {{{{ $now | Quote }}}}, finishedAt: {{{{ $now | Quote }}}}}}}}
      {{{{ end }}}}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-fail}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: DoesNotExist}}
    - {{key: '.spec.containers.[].image', operator: NotIn, values: {_RUNNER_IMAGES}}}
    - {{key: '.status.phase', operator: In, values: [Running]}}
    - {{key: '{_ann(EXIT_CODE)}', operator: Exists}}
  delay:
    durationMilliseconds: 1000
    durationFrom: {{expressionFrom: '{_ann(RUN_DURATION)}'}}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $annotations := or .metadata.annotations dict }}}}
      {{{{ $code := index $annotations "{EXIT_CODE}" }}}}
      {{{{ $reason := or ( index $annotations "{REASON}" ) "Error" }}}}
      conditions:
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: Ready, reason: PodFailed}}
      - {{lastTransitionTime: {{{{ $now | Quote }}}}, status: "False", type: ContainersReady, reason: PodFailed}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        started: false
        restartCount: 0
        state: {{terminated: {{exitCode: {{{{ $code }}}}, reason: {{{{ $reason | Quote }}}}, startedAt: {{{{ $now | Quote }}}}, finishedAt: {{{{ $now | Quote }}}}}}}}
      {{{{ end }}}}
      phase: Failed
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {{name: pod-delete}}
spec:
  resourceRef: {{apiGroup: v1, kind: Pod}}
  selector:
    matchExpressions:
    - {{key: '.metadata.deletionTimestamp', operator: Exists}}
    - {{key: '.spec.containers.[].image', operator: NotIn, values: {_RUNNER_IMAGES}}}
  next:
    finalizers: {{empty: true}}
    delete: true
""")


def fake_node(name: str, cpu: str, memory: str, gpus: int = 0, labels: dict[str, str] | None = None,
              taints: list[k8s.V1Taint] | None = None) -> k8s.V1Node:
    """A Node that KWOK manages; capacity is set at create (nodes accept status on create)."""
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "500Gi"}
    all_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        all_labels["nvidia.com/gpu.present"] = "true"
    all_labels.update(labels or {})
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels=all_labels, annotations=dict([FAKE_NODE_ANNOTATION])),
        spec=k8s.V1NodeSpec(taints=taints),
        status=k8s.V1NodeStatus(capacity=capacity, allocatable=dict(capacity)),
    )


def kwok_argv(binary: str, kubeconfig: str, config: str) -> list[str]:
    return [
        binary, f"--kubeconfig={kubeconfig}", f"--config={config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION[0]}={FAKE_NODE_ANNOTATION[1]}",
        "--node-ip=10.240.0.1", "--cidr=10.244.0.0/16",
        # Renew node Leases (every 10 s) like a kubelet, so the node-lifecycle controller
        # keeps the nodes Ready for as long as the session runs.
        "--node-lease-duration-seconds=40",
        # No kubelet API server: nothing here calls exec/logs, and it would need a port.
        "--node-port=0", "--server-address=",
    ]
