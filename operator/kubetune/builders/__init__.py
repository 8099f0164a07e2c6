"""Pure functions from typed inputs to Kubernetes manifests (plain dicts).

Nothing here talks to the apiserver, so every manifest is unit-tested
without a cluster; the controllers decide what to build and apply it.
`trainer/` builds a FineTuneJob's children, `serving/` a ModelDeployment's;
`common` holds the owner, names and labels both use.
"""
