"""Built-in processor types (pure, synchronous transforms of a request). Importing this
package registers each one by type name; `pipeline/stage.py` applies them in order."""
