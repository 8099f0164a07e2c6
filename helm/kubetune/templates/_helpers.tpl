{{- define "kubetune.labels" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "kubetune.selector" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "kubetune.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{/* The operator's ServiceAccount as the apiserver names it in request.userInfo.username. */}}
{{- define "kubetune.operatorUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "kubetune.fullname" . }}
{{- end -}}
{{/* The namespaces of a namespace-scoped install, one per line. */}}
{{- define "kubetune.watchNamespaces" -}}
{{- range (.Values.watchNamespaces | default (list .Release.Namespace)) }}
{{ . }}
{{- end -}}
{{- end -}}
{{/* The admission policy bindings' matchResources: the chosen namespaces. */}}
{{- define "kubetune.policyMatchResources" -}}
{{- if .Values.admissionPolicies.namespaceSelector }}
namespaceSelector: {{- toYaml .Values.admissionPolicies.namespaceSelector | nindent 2 }}
{{- else if not .Values.watchAllNamespaces }}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{- splitList "\n" (include "kubetune.watchNamespaces" . | trim) | toYaml | nindent 8 }}
{{- else }}
{}
{{- end }}
{{- end -}}
{{/* A ValidatingAdmissionPolicyBinding for the policy named by the second argument. */}}
{{- define "kubetune.policyBinding" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 }}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {{ $name }}
  labels: {{- include "kubetune.labels" $root | nindent 4 }}
spec:
  policyName: {{ $name }}
  validationActions: {{ toJson $root.Values.admissionPolicies.validationActions }}
  matchResources: {{- include "kubetune.policyMatchResources" $root | nindent 4 }}
{{- end -}}
