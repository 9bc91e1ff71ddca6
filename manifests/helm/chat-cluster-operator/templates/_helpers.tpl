{{/* Name of the chart's objects: the release name when it already contains the chart name. */}}
{{- define "cco.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cco.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cco.labels" -}}
{{ include "cco.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "cco.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cco.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cco.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
RBAC rules, in three parts (docs/install.md, "Permissions"):
  cco.rules.reconcile  what reconciling needs in every namespace it reconciles: ChatClusters,
                       their children, pods (metadata list/watch), Events; Secrets get/create/patch
                       (a ChatCluster's broker, auth and internal Secrets) but no list or watch;
                       PodMonitors get/create/patch/delete (spec.monitoring.enablePodMonitor)
  cco.rules.dataPlane  what reaches into the data-plane pods: pods delete (a stuck log pod during a
                       log rollout or rollback), pods/proxy get (each pod's /status during a
                       rollout), pods/status patch (the caught-up readiness gate)
  cco.rules.cluster    cluster mode only (cluster-scoped): storageclasses get (whether a class
                       allows expanding a claim when storage.size grows; without it the operator
                       asks and the API server's admission decides)
  cco.rules.watchSecrets  list/watch Secrets: namespaced mode only, where the operator watches the
                       Secrets it labelled (app.kubernetes.io/managed-by=chat-cluster-operator)
*/}}
{{- define "cco.rules.reconcile" -}}
- apiGroups: ["chat-cluster.io"]
  resources: ["chatclusters"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["chat-cluster.io"]
  resources: ["chatclusters/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "create", "patch", "delete"]
{{- end -}}

{{- define "cco.rules.dataPlane" -}}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["delete"]
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
{{- end -}}

{{- define "cco.rules.cluster" -}}
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get"]
{{- end -}}

{{- define "cco.rules.watchSecrets" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["list", "watch"]
{{- end -}}
