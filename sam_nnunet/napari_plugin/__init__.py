"""sam-nnunet's napari plugin (``pip install "sam-nnunet[napari]"``; napari.yaml is its npe2 manifest): one dock
widget that segments, corrects and saves with a prompted model through ``InteractiveSession``
(documentation/napari.md). Importing this package does not import napari; ``widget`` does."""
