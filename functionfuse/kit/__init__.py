"""The deployment kit: container images and a local registry for functionfuse.

* :mod:`functionfuse.kit.images`: the image recipes (the root ``Dockerfile`` and
  ``images/{ray,prefect,kfp}``), their tags (``<version>-py3XX[-engine]``), builds and
  pushes with the Docker SDK (one client: :func:`~functionfuse.kit.images.docker_client`).
* :mod:`functionfuse.kit.wheelhouse`: the one offline wheelhouse of every image build,
  filled with ``pip wheel`` and served to builds on 127.0.0.1.
* :mod:`functionfuse.kit.stepimage`: the step image of a workflow (a base image +
  functionfuse + the user's project + a DAG snapshot), tagged by its content hash; what
  ``KFPWorkflow`` builds and pushes.
* :mod:`functionfuse.kit.kfpsettings`: the settings the functionfuse-kfp chart publishes
  for KFP steps (a ConfigMap), read from a file or with ``kubectl``.
* :mod:`functionfuse.kit.registry`: a real registry (Debian's ``docker-registry``) on
  127.0.0.1, started and stopped by PID, for tests and kind clusters.

Nothing here is imported by ``import functionfuse``; the Docker SDK is imported only
when an image is built or pushed (``pip install 'functionfuse[kit]'``).
"""

__all__: list[str] = []
