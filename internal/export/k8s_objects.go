package export

// The Kubernetes objects, as far as handoff writes them (plain structs marshalled
// to YAML, no Kubernetes client library); field names and order as in the API
// reference.

type object struct {
	APIVersion string            `yaml:"apiVersion"`
	Kind       string            `yaml:"kind"`
	Metadata   meta              `yaml:"metadata"`
	Type       string            `yaml:"type,omitempty"`
	StringData map[string]string `yaml:"stringData,omitempty"`
	Spec       any               `yaml:"spec,omitempty"`
}

type meta struct {
	Name        string            `yaml:"name,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

type selector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

type deploymentSpec struct {
	Replicas                int                `yaml:"replicas"`
	RevisionHistoryLimit    int                `yaml:"revisionHistoryLimit"`
	MinReadySeconds         int                `yaml:"minReadySeconds"`
	ProgressDeadlineSeconds int                `yaml:"progressDeadlineSeconds"`
	Selector                selector           `yaml:"selector"`
	Strategy                deploymentStrategy `yaml:"strategy"`
	Template                podTemplate        `yaml:"template"`
}

type deploymentStrategy struct {
	Type          string         `yaml:"type"`
	RollingUpdate *rollingUpdate `yaml:"rollingUpdate,omitempty"`
}

type rollingUpdate struct {
	MaxSurge       int `yaml:"maxSurge"`
	MaxUnavailable int `yaml:"maxUnavailable"`
}

type podTemplate struct {
	Metadata meta    `yaml:"metadata"`
	Spec     podSpec `yaml:"spec"`
}

type podSpec struct {
	RestartPolicy                 string      `yaml:"restartPolicy,omitempty"`
	TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds,omitempty"`
	Containers                    []container `yaml:"containers"`
}

type container struct {
	Name            string          `yaml:"name"`
	Image           string          `yaml:"image"`
	ImagePullPolicy string          `yaml:"imagePullPolicy,omitempty"`
	Command         []string        `yaml:"command,omitempty"`
	Args            []string        `yaml:"args,omitempty"`
	WorkingDir      string          `yaml:"workingDir,omitempty"`
	Ports           []containerPort `yaml:"ports,omitempty"`
	Env             []envVar        `yaml:"env,omitempty"`
	Resources       *resources      `yaml:"resources,omitempty"`
	ReadinessProbe  *probe          `yaml:"readinessProbe,omitempty"`
	Lifecycle       *lifecycle      `yaml:"lifecycle,omitempty"`
	TTY             bool            `yaml:"tty,omitempty"`
	Stdin           bool            `yaml:"stdin,omitempty"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
	Protocol      string `yaml:"protocol"`
}

type envVar struct {
	Name      string     `yaml:"name"`
	ValueFrom *envSource `yaml:"valueFrom,omitempty"`
}

type envSource struct {
	SecretKeyRef keyRef `yaml:"secretKeyRef"`
}

type keyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

type resources struct {
	Limits map[string]string `yaml:"limits"`
}

type probe struct {
	HTTPGet          *httpGet    `yaml:"httpGet,omitempty"`
	TCPSocket        *tcpSocket  `yaml:"tcpSocket,omitempty"`
	Exec             *execAction `yaml:"exec,omitempty"`
	PeriodSeconds    int         `yaml:"periodSeconds"`
	TimeoutSeconds   int         `yaml:"timeoutSeconds"`
	SuccessThreshold int         `yaml:"successThreshold"`
	FailureThreshold int         `yaml:"failureThreshold"`
}

type httpGet struct {
	Path        string       `yaml:"path"`
	Port        string       `yaml:"port"`
	HTTPHeaders []httpHeader `yaml:"httpHeaders,omitempty"`
}

type httpHeader struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

type tcpSocket struct {
	Port string `yaml:"port"`
}

type execAction struct {
	Command []string `yaml:"command"`
}

type lifecycle struct {
	PreStop handler `yaml:"preStop"`
}

type handler struct {
	Sleep *sleepAction `yaml:"sleep,omitempty"`
}

type sleepAction struct {
	Seconds int `yaml:"seconds"`
}

type serviceSpec struct {
	Selector map[string]string `yaml:"selector"`
	Ports    []servicePort     `yaml:"ports"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
	Protocol   string `yaml:"protocol"`
}

type pdbSpec struct {
	MaxUnavailable int      `yaml:"maxUnavailable"`
	Selector       selector `yaml:"selector"`
}

type jobSpec struct {
	BackoffLimit          *int        `yaml:"backoffLimit"`
	ActiveDeadlineSeconds int         `yaml:"activeDeadlineSeconds"`
	Template              podTemplate `yaml:"template"`
}
