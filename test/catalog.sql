-- The catalog of the docextract extension as sorted lines, for comparing a
-- fresh install with an upgraded one (TAP 013_upgrade).  Names, definitions,
-- settings, ACLs and column order; never OIDs, which differ.
WITH ext AS (
    SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'docextract'
), member AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
), rel AS (
    SELECT c.oid, c.relname FROM member m JOIN pg_class c ON m.classid = 'pg_class'::regclass
                                                        AND c.oid = m.objid
)
SELECT line FROM (
    SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM member
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || E'\n' || pg_get_functiondef(p.oid)
           || E'\nacl ' || coalesce(p.proacl::text, 'default')
      FROM member m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
     WHERE p.prokind <> 'a'
    UNION ALL
    SELECT format('relation %s kind %s rls %s/%s options %s acl %s', c.relname, c.relkind,
                  c.relrowsecurity, c.relforcerowsecurity, c.reloptions,
                  coalesce(c.relacl::text, 'default'))
      FROM rel JOIN pg_class c USING (oid)
    UNION ALL
    SELECT format('column %s.%s #%s %s notnull %s default %s storage %s', rel.relname, a.attname,
                  a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(ad.adbin, ad.adrelid), a.attstorage)
      FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    UNION ALL
    SELECT format('constraint %s.%s %s', rel.relname, co.conname, pg_get_constraintdef(co.oid))
      FROM rel JOIN pg_constraint co ON co.conrelid = rel.oid
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
      FROM rel JOIN pg_index i ON i.indrelid = rel.oid
    UNION ALL
    SELECT format('trigger %s', pg_get_triggerdef(t.oid))
      FROM rel JOIN pg_trigger t ON t.tgrelid = rel.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy %s.%s %s %s roles %s using %s check %s', rel.relname, po.polname,
                  po.polcmd, po.polpermissive, po.polroles::regrole[],
                  pg_get_expr(po.polqual, po.polrelid), pg_get_expr(po.polwithcheck, po.polrelid))
      FROM rel JOIN pg_policy po ON po.polrelid = rel.oid
    UNION ALL
    SELECT format('view %s %s', rel.relname, pg_get_viewdef(rel.oid))
      FROM rel JOIN pg_class c USING (oid) WHERE c.relkind = 'v'
    UNION ALL
    SELECT format('sequence %s %s %s %s %s', rel.relname, s.seqtypid::regtype, s.seqstart,
                  s.seqincrement, s.seqcycle)
      FROM rel JOIN pg_sequence s ON s.seqrelid = rel.oid
    UNION ALL
    SELECT format('config_dump %s where %s', cfg::regclass, cond)
      FROM ext, unnest(ext.extconfig, ext.extcondition) AS u(cfg, cond)
    UNION ALL
    SELECT format('schema acl %s', n.nspacl) FROM pg_namespace n WHERE n.nspname = 'docextract'
) s(line)
ORDER BY line;
