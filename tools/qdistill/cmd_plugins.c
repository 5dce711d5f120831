/* qdistill plugins / describe: what the registry holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "qdistill/schema.h"

int cmd_plugins(cli *c, int argc, char **argv)
{
    int kind = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--kind") == 0 && i + 1 < argc) {
            kind = qd_kind_from_name(argv[++i]);
            if (!kind) {
                fprintf(stderr, "qdistill plugins: unknown kind '%s' (kinds: encoder, ansatz, "
                                "observable, simulator, distiller, dataset)\n", argv[i]);
                return EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "usage: qdistill plugins [--kind KIND]\n");
            return EXIT_USAGE;
        }
    }
    int rc = cli_registry(c);
    if (rc)
        return rc;
    printf("%-11s %-22s %-8s %s\n", "KIND", "NAME", "VERSION", "SUMMARY");
    /* Group by kind, in kind order. */
    for (int k = 1; k < QD_KIND_COUNT_; ++k) {
        if (kind && k != kind)
            continue;
        for (size_t i = 0; i < qd_registry_count(c->reg); ++i) {
            const qd_plugin_desc *d = qd_registry_at(c->reg, i, NULL);
            if ((int)d->kind == k)
                printf("%-11s %-22s %-8s %s\n", qd_kind_name(k), d->name, d->version, d->summary);
        }
    }
    return EXIT_OK;
}

static void print_params(const qd_param *p, int indent)
{
    for (; p && p->name; ++p) {
        char *type = qd_param_type_text(p);
        const char *def = p->def ? p->def : (p->flags & QD_PARAM_REQUIRED) ? "(required)" : "-";
        printf("%*s%-20s %-28s %-14s %s\n", indent, "", p->name, type ? type : "?", def,
               p->doc ? p->doc : "");
        free(type);
        if (p->fields)
            print_params(p->fields, indent + 4);
    }
}

int cmd_describe(cli *c, int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: qdistill describe [KIND/]PLUGIN\n");
        return EXIT_USAGE;
    }
    int rc = cli_registry(c);
    if (rc)
        return rc;
    char *spec = argv[1];
    char *slash = strchr(spec, '/');
    int kind = 0;
    const char *name = spec;
    if (slash) {
        *slash = '\0';
        kind = qd_kind_from_name(spec);
        name = slash + 1;
        if (!kind) {
            fprintf(stderr, "qdistill describe: unknown kind '%s'\n", spec);
            return EXIT_USAGE;
        }
    }
    int found = 0;
    for (size_t i = 0; i < qd_registry_count(c->reg); ++i) {
        const char *origin;
        const qd_plugin_desc *d = qd_registry_at(c->reg, i, &origin);
        if (strcmp(d->name, name) != 0 || (kind && (int)d->kind != kind))
            continue;
        if (found++)
            printf("\n");
        printf("%s %s %s\n  %s\n  from %s\n\n", qd_kind_name((int)d->kind), d->name, d->version,
               d->summary, origin);
        printf("  %-20s %-28s %-14s %s\n", "KEY", "TYPE", "DEFAULT", "DESCRIPTION");
        printf("  %-20s %-28s %-14s %s\n", "plugin", "string", "(required)",
               "selects this plugin");
        print_params(d->params, 2);
    }
    if (!found) {
        fprintf(stderr, "qdistill describe: no plugin named '%s'; `qdistill plugins` lists them\n",
                name);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}
