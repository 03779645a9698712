"""Class activation maps from a model: Grad-CAM, Grad-CAM++, EigenCAM, a random-map control and friends.

Laid out as pytorch-grad-cam is (one small class per method over a shared base, same names, same
arithmetic), but built for scoring thousands of maps:

- **Batched, one target per image.** ``cam(images, class_indices)`` explains image ``b`` for class
  ``class_indices[b]``. (pytorch-grad-cam needs one ``ClassifierOutputTarget`` per image; a single
  target silently explains only the first image and leaves the others all-zero.)
- **No parameter gradients, no backward through the trunk** (``features``): only the layers after
  the target layer are differentiated; pytorch-grad-cam runs a full backward image by image.
- **Shared features** (``batch_loop``): one forward (and the head-only backward) per batch feeds
  every requested method; a pytorch-grad-cam method runs through its adapter (``library_cam``).

Post-processing is pytorch-grad-cam's (``base_cam``); a map whose raw values are non-finite stays
NaN so that it cannot be scored silently (``cxr_core.explain.degenerate`` reports such maps).

Files: ``features`` (the hooked forward), ``base_cam`` (post-processing and the base class), one
file per method (``grad_cam``, ``grad_cam_plusplus``, ``xgrad_cam``, ``hirescam``, ``layer_cam``,
``eigen_cam``, ``random_cam``), ``library_cam`` (any pytorch-grad-cam method), ``registry`` (names
to methods), ``settings`` (the ``cam`` section), ``batch_loop`` (the batches).
"""
