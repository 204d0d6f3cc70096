"""Registries by name, as in timm: `@register('name')` where a thing is defined, lookup by name elsewhere."""


def registrar(table, kind):
    """The `register(name)` decorator of one registry: it adds the decorated object to `table` under
    `name`; `kind` names the things in error messages ('gate', 'metric', ...)."""
    def register(name):
        def decorator(obj):
            if name in table and table[name] is not obj:
                raise ValueError(f'{kind} {name!r} is registered twice')
            table[name] = obj
            return obj
        return decorator
    return register
